"""The curated list behind `tools/training_photos --debian`: which image files of which
Debian (bookworm) packages are photographs of scenes under free licences, and which were
looked at and left out, with the reason.

Kept by a person who looked at every image of the package, not by a heuristic: desktop
wallpaper packages mix photographs with renders, gradients and logos, and no file name
or statistic tells a toned-down photo from a painting reliably. Each kept file names the
path its package's DEP-5 copyright file uses for it (``licensed_as``, matched against
the ``Files:`` patterns there) and the licence that file gives it; the tool reads the
copyright file of the .deb it actually uses and refuses a photo whose licence there
differs, so a later package revision cannot change a licence silently.
"""

from __future__ import annotations

from dataclasses import dataclass

# Licences that allow redistribution and modification, so also training and shipping
# weights; GPL/LGPL photos are free by Debian's rules (the source of a photo is the photo).
ALLOWED_LICENCES = frozenset({
    "CC0-1.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "GPL-2+",
})

# Denoising test sets whose photos must never be trained on (checked by the tests).
TEST_SETS = ("kodak", "kodim", "bsd68", "cbsd68", "mcmaster", "set12", "urban100")


@dataclass(frozen=True)
class DebianPhoto:
    name: str          # the photo's name in the written folder (NN_name.png)
    package: str       # Debian binary package
    member: str        # the image file inside the package
    licensed_as: str   # that file's path in the package's debian/copyright
    licence: str       # the License: short name debian/copyright gives it
    shows: str         # what the photograph shows (why it was kept)
    metadata: str = ""  # an upstream metadata.json inside the package naming the author


def _lomiri(name, file, licence, shows, series="16.04"):
    package = "lomiri-wallpapers" + ("-" + series)
    return DebianPhoto(name, package, "usr/share/backgrounds/" + file, f"{series}/{file}",
                       licence, shows)


def _mate(file, shows):
    return DebianPhoto("mate_" + file.lower(), "mate-backgrounds",
                       f"usr/share/backgrounds/mate/nature/{file}.jpg", f"nature/{file}.jpg",
                       "GPL-2+", shows)


def _kde(folder, shows):
    where = f"usr/share/wallpapers/{folder}"
    return DebianPhoto("kde_" + folder.lower(), "plasma-workspace-wallpapers",
                       f"{where}/contents/images/2560x1600.jpg",
                       f"{folder}/contents/images/2560x1600.jpg", "GPL-2+", shows,
                       metadata=f"{where}/metadata.json")


KEPT = (
    _lomiri("lomiri_aitzgorri", "aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
            "mountain ridge over an autumn forest and a meadow"),
    _lomiri("lomiri_bridge", "Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0",
            "bridge cables against the sky over a beach"),
    _lomiri("lomiri_dragonfly", "Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0",
            "dragonfly on a leafy plant against a blue sky"),
    _lomiri("lomiri_free", "free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0",
            "bird figurine hanging under ceiling lamps"),
    _lomiri("lomiri_friends", "friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
            "two dogs looking out of a wooden house's window"),
    _lomiri("lomiri_greentock", "greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0",
            "wall clock on a textured wall"),
    _lomiri("lomiri_life", "life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
            "stream over rocks in a forest"),
    _lomiri("lomiri_picosdeeuropa", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
            "path over a pasture below rocky snowy peaks"),
    _lomiri("lomiri_fig", "Picture_0B_by_freespace.jpg", "CC-BY-4.0",
            "halved fig in a red bowl on concrete"),
    _lomiri("lomiri_brushes", "Picture_1A_by_freespace.jpg", "CC-BY-4.0",
            "coloured paint brushes, close up"),
    _lomiri("lomiri_seeding", "seeding_by_Clements_Engelhardt.jpg", "CC0-1.0",
            "dandelion clocks in grass against the evening sun"),
    _lomiri("lomiri_sunset", "sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0",
            "sun setting over hills, a rocky summit in front"),
    _lomiri("lomiri_wine", "Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0",
            "room with a drum on a bean bag, a table and a wine bottle"),
    _lomiri("lomiri_kleiber", "Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0",
            "nuthatch on a tree trunk", series="20.04"),
    _mate("Aqua", "water drop splashing into water, close up"),
    _mate("Blinds", "backlit green leaf, close up"),
    _mate("Dune", "dune grass against the sea and the sky"),
    _mate("FreshFlower", "orange flower petals, close up"),
    _mate("Garden", "red and yellow marigold"),
    _mate("GreenMeadow", "blades of grass"),
    _mate("LadyBird", "ladybird on a grass stalk among forget-me-nots"),
    _mate("RainDrops", "rain drops on green leaves"),
    _mate("Storm", "storm clouds over a plain, seen from a moving car"),
    _mate("TwoWings", "dandelion seeds in front of orange flowers"),
    _mate("Wood", "weathered white painted wood, close up"),
    _mate("YellowFlower", "yellow flower petals, close up"),
    _kde("ColdRipple", "jetty in fog on a lake (black and white)"),
    _kde("ColorfulCups", "stacked coloured plastic cups from above"),
    _kde("DarkestHour", "lake and islands at dusk"),
    _kde("FallenLeaf", "fallen maple leaves on grass"),
    _kde("Grey", "curved facade of a building (black and white)"),
    _kde("Kite", "kite in a blue sky with clouds"),
    _kde("OneStandsOut", "moss from above, one shoot orange"),
    _kde("Path", "path through a spruce forest"),
    _kde("summer_1am", "lake and reeds in a summer night's twilight"),
)

# Looked at and left out: package -> {file or group: why}.
REJECTED = {
    "lomiri-wallpapers-16.04": {
        "analogpattern_by_Peter_Nerlich.jpg": "wall texture under a colour overlay",
        "umang_by_Abhishek_Mudgal.jpg": "abstract colour render",
    },
    "lomiri-wallpapers-20.04": {
        "Fossa_by_Jasper_Roks.jpg": "abstract render",
        "Infinite-Sea_by_Aury88.jpg": "composite: a galaxy pasted over a sea",
        "Painting-Colors_by__herobrine7gamer.jpg": "drawing of colour bands",
    },
    "lomiri-wallpapers": {"*": "Ubuntu's abstract default backgrounds"},
    "mate-backgrounds": {"abstract/*, desktop/*": "art, stripes, logos, blurred colour"},
    "plasma-workspace-wallpapers": {
        "Altai Autumn Canopee Cascade Cluster Elarun Flow FlyingKonqui Honeywave IceCold "
        "Kay Kokkini MilkyWay Opal PastelHills Patak SafeLanding Shell Volna": "renders "
        "and drawings",
        "BytheWater": "photograph under a strong cross-processing colour filter",
        "EveningGlow": "HDR tone-mapped photograph, with halos",
    },
    "gnome-backgrounds": {"*": "43.1's are renders, and its copyright file names none of them"},
    "ukui-wallpapers": {"*": "renders and drawings"},
    "sway-backgrounds": {"*": "logo on a flat colour"},
}
