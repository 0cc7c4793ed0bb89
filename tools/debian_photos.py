"""Photographs of scenes out of Debian packages, for `tools/training_photos --debian`.

Debian's archive is free software by its own rules, and its desktop wallpaper packages
hold photographs with a licence for each in a machine-readable copyright file. This
reads the files of ``debian_photos_list.KEPT`` out of the packages' .deb files (taken
from a folder, or fetched there with ``apt-get download``; nothing is installed), checks
each one's licence against the package's own ``usr/share/doc/PKG/copyright``, and
returns it as RGB with a line naming package, version, path, author and licence.

Photos are downscaled so the long side is at most ``MAX_SIDE`` pixels with Pillow's
Lanczos filter: wallpapers run to 6000 pixels wide, which slows every epoch's decoding
for little gain (a 64x64 training crop of a 6000-pixel photo is a patch of plain sky),
and averaging pixels also lowers the camera's own noise and JPEG artefacts in the
clean targets.
"""

from __future__ import annotations

import fnmatch
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from debian_photos_list import ALLOWED_LICENCES, KEPT, DebianPhoto

MAX_SIDE = 1280


class PackageError(Exception):
    """A .deb that cannot be had or read, or whose copyright disagrees with the list."""


def parse_copyright(text: str) -> list[dict[str, str]]:
    """The ``Files:`` paragraphs of a DEP-5 copyright file, each field's value with its
    continuation lines joined by newlines (License: keeps only its first line, the
    short name, since the licence text follows it)."""
    paragraphs = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields, key = {}, None
        for line in block.split("\n"):
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if "Files" in fields:
            fields["License"] = fields.get("License", "").split("\n")[0].strip()
            paragraphs.append(fields)
    if not paragraphs:
        raise PackageError("copyright file is not in the machine-readable (DEP-5) format")
    return paragraphs


def covering(paragraphs: list[dict[str, str]], path: str) -> dict[str, str]:
    """The paragraph whose ``Files:`` patterns match ``path``; the last one wins, as
    DEP-5 says (``*`` matches ``/`` too)."""
    found = None
    for paragraph in paragraphs:
        if any(fnmatch.fnmatchcase(path, p) for p in paragraph["Files"].split()):
            found = paragraph
    if found is None:
        raise PackageError(f"no Files: paragraph of the copyright file covers {path}")
    return found


def deb_for(package: str, folder: Path) -> Path:
    """The .deb of ``package`` in ``folder``, fetched there with apt-get if none is."""
    found = sorted(folder.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fetching {package} (apt-get download, for its photos only)", file=sys.stderr)
    try:
        result = subprocess.run(["apt-get", "download", package], cwd=folder,
                                capture_output=True, text=True)
    except FileNotFoundError:
        raise PackageError(f"cannot download {package}: apt-get is not installed "
                           "(give the .deb files with --debs DIR)") from None
    found = sorted(folder.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not found:
        why = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise PackageError(f"could not download {package}: {' '.join(why)}")
    return found[-1]


def deb_field(deb: Path, field: str) -> str:
    return _dpkg_deb(["-f", str(deb), field], deb).decode().strip()


def _dpkg_deb(args: list[str], deb: Path) -> bytes:
    try:
        result = subprocess.run(["dpkg-deb", *args], capture_output=True)
    except FileNotFoundError:
        raise PackageError("dpkg-deb is not installed; it reads the .deb files") from None
    if result.returncode != 0:
        raise PackageError(f"{deb}: not a readable .deb "
                           f"({result.stderr.decode(errors='replace').strip()[-200:]})")
    return result.stdout


def read_members(deb: Path, members: set[str]) -> dict[str, bytes]:
    """The bytes of ``members`` (paths inside the package, no leading ``./``), read from
    the package's file tree in one pass; a missing member or a link is an error."""
    tree = io.BytesIO(_dpkg_deb(["--fsys-tarfile", str(deb)], deb))
    out = {}
    with tarfile.open(fileobj=tree, mode="r:") as archive:
        for entry in archive:
            path = entry.name.removeprefix("./")
            if path in members and entry.isfile():
                out[path] = archive.extractfile(entry).read()
    if set(out) != members:
        missing = ", ".join(sorted(members - set(out)))
        raise PackageError(f"{deb.name} has no regular file {missing}")
    return out


def downscaled(raw: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 of an image file, long side at most MAX_SIDE, and its first size."""
    from PIL import Image, ImageOps
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))  # a camera's rotation tag
    size = image.size
    image = image.convert("RGB")
    scale = MAX_SIDE / max(size)
    if scale < 1:
        target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        image = image.resize(target, Image.LANCZOS)
    return np.asarray(image), size


def upstream_author(raw: bytes) -> str:
    """Authors and licence named by a KDE wallpaper's metadata.json."""
    plugin = json.loads(raw).get("KPlugin", {})
    names = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
    return f"upstream metadata.json: {names}, {plugin.get('License', 'no licence named')}"


def source_line(photo: DebianPhoto, version: str, paragraph: dict[str, str],
                size: tuple[int, int], array: np.ndarray, upstream: str) -> str:
    holders = "; ".join(line for line in paragraph.get("Copyright", "").split("\n") if line)
    parts = [f"photograph of {photo.shows}", f"Debian package {photo.package} {version}",
             f"/{photo.member}", f"copyright {holders}",
             f"licence {paragraph['License']} (debian/copyright)"]
    if upstream:
        parts.append(upstream)
    if (array.shape[1], array.shape[0]) != size:
        parts.append(f"downscaled from {size[0]}x{size[1]} (Lanczos)")
    return "; ".join(parts)


def package_photos(deb: Path, photos: list[DebianPhoto]) -> dict[str, tuple[np.ndarray, str]]:
    """``photos`` (all of one package) read out of ``deb``, each with its source line."""
    package = photos[0].package
    copyright_path = f"usr/share/doc/{package}/copyright"
    wanted = {copyright_path} | {p.member for p in photos} | {p.metadata for p in photos if p.metadata}
    files = read_members(deb, wanted)
    paragraphs = parse_copyright(files[copyright_path].decode("utf-8", errors="replace"))
    version = deb_field(deb, "Version")
    out = {}
    for photo in photos:
        paragraph = covering(paragraphs, photo.licensed_as)
        if paragraph["License"] != photo.licence or photo.licence not in ALLOWED_LICENCES:
            raise PackageError(
                f"{package} {version}: its copyright file licenses {photo.licensed_as} under "
                f"{paragraph['License']!r}, the curated list expects {photo.licence!r}; "
                "look again before training on it")
        array, size = downscaled(files[photo.member])
        upstream = upstream_author(files[photo.metadata]) if photo.metadata else ""
        out[photo.name] = array, source_line(photo, version, paragraph, size, array, upstream)
    return out


def debian_photos(debs: Path, without: frozenset[str] = frozenset(),
                  kept: tuple[DebianPhoto, ...] | None = None) -> dict[str, tuple[np.ndarray, str]]:
    """The photos of ``kept`` (the curated KEPT) but those in ``without``, in the list's
    order; packages with no photo left are not fetched."""
    kept = KEPT if kept is None else kept
    by_package: dict[str, list[DebianPhoto]] = {}
    for photo in kept:
        if photo.name not in without:
            by_package.setdefault(photo.package, []).append(photo)
    out = {}
    for package, photos in by_package.items():
        out.update(package_photos(deb_for(package, debs), photos))
    return {p.name: out[p.name] for p in kept if p.name in out}


def validation_names(debian: list[str], total: int, fixed: list[str]) -> list[str]:
    """The validation photos for a folder of ``total``: ``fixed`` and, since the runner
    holds out every fifth file, enough of ``debian`` to make ``total // 5``, spread
    evenly over its order (so over the packages)."""
    extra = total // 5 - len(fixed)
    if extra <= 0:
        return list(fixed)
    if extra > len(debian):
        raise PackageError(f"{total} photos need {extra} validation photos from Debian, "
                           f"only {len(debian)} are there")
    return list(fixed) + [debian[int((i + 0.5) * len(debian) / extra)] for i in range(extra)]
