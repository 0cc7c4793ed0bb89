"""tools/training_photos --debian: photos read out of Debian packages with the licence
their own copyright file gives them. Nothing is downloaded: the .deb files are built in
the test with dpkg-deb --build, and apt-get and pip fail the test if called."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import helpers  # noqa: F401  (puts tools/ on the path)
from n2ngraph.app import data as datasets
from n2ngraph.app.train import held_out
from test_training_photos import tool

import debian_photos as debian  # noqa: E402
import debian_photos_list as curated  # noqa: E402

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake-wallpapers

Files: *
Copyright: 2020 Everyone
License: GPL-2+

Files: photos/*.png
Copyright: 2021, Ann Author
           2022, Bo Author
License: CC-BY-4.0
 Attribution 4.0 International
 .
 licence text, not part of the name

Files: photos/odd.png
Copyright: Cy
License: {odd}
"""


def test_copyright_paragraphs_and_the_last_matching_one_wins():
    paragraphs = debian.parse_copyright(COPYRIGHT.format(odd="CC-BY-NC-4.0"))
    assert [p["License"] for p in paragraphs] == ["GPL-2+", "CC-BY-4.0", "CC-BY-NC-4.0"]
    assert debian.covering(paragraphs, "photos/a.png")["Copyright"] == "2021, Ann Author\n2022, Bo Author"
    assert debian.covering(paragraphs, "photos/odd.png")["License"] == "CC-BY-NC-4.0"
    assert debian.covering(paragraphs, "deep/er/a.jpg")["License"] == "GPL-2+"  # * spans /
    with pytest.raises(debian.PackageError, match="covers x.png"):
        debian.covering(paragraphs[1:], "x.png")
    with pytest.raises(debian.PackageError, match="not in the machine-readable"):
        debian.parse_copyright("This package was debianized by someone.\nCopyright: 2005\n")


def test_the_curated_list_keeps_only_freely_licensed_photos_with_unique_names():
    names = [p.name for p in curated.KEPT]
    assert len(names) == len(set(names)) >= 30
    assert not set(names) & (set(datasets.EMBEDDED) | set(tool.WHEEL_PHOTOS) | set(tool.MATPLOTLIB_PHOTOS))
    for photo in curated.KEPT:
        assert re.fullmatch(r"[a-z0-9_]+", photo.name), photo.name
        assert photo.licence in curated.ALLOWED_LICENCES, photo
        assert photo.shows and photo.member.lower().endswith((".jpg", ".png")), photo
        assert photo.package in curated.REJECTED, f"{photo.package}: its rejects are not listed"
        rejected = " ".join(curated.REJECTED[photo.package])
        assert photo.member.split("/")[-1] not in rejected.split(), photo
        text = f"{photo.name} {photo.member}".lower()
        assert not any(test_set in text for test_set in curated.TEST_SETS), photo
    assert not curated.ALLOWED_LICENCES & {"CC-BY-NC-4.0", "CC-BY-ND-4.0", "Proprietary"}


def _png(array: np.ndarray) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _build_deb(folder, files: dict[str, bytes], package="fake-wallpapers", version="1.2-3"):
    """A real .deb of ``files`` (paths inside the package) with a DEP-5 copyright file."""
    tree = folder / "tree"
    for path, raw in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(raw)
    (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: Test <t@example.org>\nDescription: fake wallpapers\n")
    deb = folder / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return deb


def _photo(name, licence="CC-BY-4.0", metadata=""):
    return curated.DebianPhoto(name, "fake-wallpapers", f"usr/share/fake/{name}.png",
                               f"photos/{name}.png", licence, f"a scene called {name}", metadata)


def _fake_package(folder, arrays: dict[str, np.ndarray], odd="CC-BY-NC-4.0"):
    files = {f"usr/share/fake/{n}.png": _png(a) for n, a in arrays.items()}
    files["usr/share/doc/fake-wallpapers/copyright"] = COPYRIGHT.format(odd=odd).encode()
    files["usr/share/fake/meta.json"] = json.dumps(
        {"KPlugin": {"Authors": [{"Name": "Di Photographer"}], "License": "LGPLv3"}}).encode()
    return _build_deb(folder, files)


@pytest.fixture
def no_downloads(monkeypatch):
    real = subprocess.run

    def run(command, *args, **kwargs):
        if command[0] in ("apt-get", "pip") or "pip" in command[1:4]:
            pytest.fail(f"tried to download: {command}")
        return real(command, *args, **kwargs)

    monkeypatch.setattr(debian.subprocess, "run", run)


@needs_dpkg
def test_photos_come_out_of_a_deb_downscaled_with_their_licence(tmp_path, no_downloads):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (700, 1600, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    _fake_package(tmp_path, {"big": big, "small": small})
    kept = (_photo("small", metadata="usr/share/fake/meta.json"), _photo("big"))
    photos = debian.debian_photos(tmp_path, kept=kept)
    assert list(photos) == ["small", "big"]  # the list's order
    np.testing.assert_array_equal(photos["small"][0], small)  # small ones untouched
    assert photos["big"][0].shape == (560, 1280, 3) and photos["big"][0].dtype == np.uint8
    line = photos["big"][1]
    for part in ["photograph of a scene called big", "Debian package fake-wallpapers 1.2-3",
                 "/usr/share/fake/big.png", "copyright 2021, Ann Author; 2022, Bo Author",
                 "licence CC-BY-4.0 (debian/copyright)", "downscaled from 1600x700 (Lanczos)"]:
        assert part in line
    assert "upstream metadata.json: Di Photographer, LGPLv3" in photos["small"][1]
    assert "downscaled" not in photos["small"][1]
    assert list(debian.debian_photos(tmp_path, frozenset({"big"}), kept=kept)) == ["small"]


@needs_dpkg
def test_a_licence_that_differs_from_the_list_or_a_missing_file_is_refused(tmp_path, no_downloads):
    _fake_package(tmp_path, {"odd": np.zeros((8, 8, 3), np.uint8)}, odd="CC-BY-NC-4.0")
    with pytest.raises(debian.PackageError, match=r"licenses photos/odd.png under 'CC-BY-NC-4.0'"
                                                  r".*expects 'CC-BY-4.0'"):
        debian.debian_photos(tmp_path, kept=(_photo("odd"),))
    with pytest.raises(debian.PackageError, match="has no regular file usr/share/fake/gone.png"):
        debian.debian_photos(tmp_path, kept=(_photo("gone"),))
    (tmp_path / "broken_1_all.deb").write_bytes(b"not a deb")
    with pytest.raises(debian.PackageError, match="broken_1_all.deb: not a readable .deb"):
        debian.read_members(tmp_path / "broken_1_all.deb", {"x"})


def test_a_failed_apt_get_download_names_the_package(tmp_path, monkeypatch):
    class Failed:
        returncode, stdout, stderr = 100, "", "E: Unable to locate package no-such-wallpapers"

    monkeypatch.setattr(debian.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(debian.PackageError, match="could not download no-such-wallpapers: "
                                                  "E: Unable to locate"):
        debian.deb_for("no-such-wallpapers", tmp_path)


@pytest.mark.parametrize("total", [10, 14, 15, 48, 49])
def test_debian_photos_fill_the_validation_places_the_runner_holds_out(total):
    fixed = ["coffee", "rocket"]
    debian_names = [f"d{i}" for i in range(total - 10)]
    validation = debian.validation_names(debian_names, total, fixed)
    assert validation[:2] == fixed and len(validation) == total // 5
    train = [f"t{i}" for i in range(10 - len(fixed))] + [n for n in debian_names if n not in validation]
    assert held_out(tool.ordered(train, validation)) == validation
    with pytest.raises(debian.PackageError, match="need 3 validation photos from Debian"):
        debian.validation_names(["d0"], 25, fixed)


@needs_dpkg
def test_the_tool_writes_debian_photos_with_their_sources(tmp_path, no_downloads, monkeypatch, capsys):
    rng = np.random.default_rng(2)
    arrays = {f"p{i}": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for i in range(6)}
    _fake_package(tmp_path, arrays)
    monkeypatch.setattr(debian, "KEPT", tuple(_photo(n) for n in arrays))
    out = tmp_path / "out"
    assert tool.main([str(out), "--debian", "--debs", str(tmp_path),
                      "--without", "china,flower,face"]) == 0
    rows = [line.split("\t") for line in (out / "SOURCES.txt").read_text().splitlines()[1:]]
    files = sorted(p.name for p in out.glob("*.png"))
    assert [r[0] for r in rows] == files and len(files) == 9 + 1 + 6  # skimage, matplotlib, fake
    assert [r[0] for r in rows if r[2] == "validation"] == held_out(files)
    assert [f.split("_", 1)[1] for f in held_out(files)] == ["coffee.png", "rocket.png", "p3.png"]
    assert "licence CC-BY-4.0 (debian/copyright)" in dict((r[0], r[3]) for r in rows)["15_p5.png"]
    assert "(coffee, rocket, p3 held out for validation)" in capsys.readouterr().out


@needs_dpkg
def test_a_refused_licence_is_one_line_and_writes_nothing(tmp_path, no_downloads, monkeypatch, capsys):
    _fake_package(tmp_path, {"odd": np.zeros((8, 8, 3), np.uint8)})
    monkeypatch.setattr(debian, "KEPT", (_photo("odd"),))
    with pytest.raises(SystemExit) as stop:
        tool.main([str(tmp_path / "out"), "--debian", "--debs", str(tmp_path),
                   "--without", "china,flower,face"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error: fake-wallpapers 1.2-3: its copyright")
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_debs_without_debian_and_debian_names_without_debian_are_refused(tmp_path, capsys):
    for argv, message in [(["--debs", str(tmp_path)], "--debs needs --debian"),
                          (["--without", "kde_path"], "unknown photo(s) kde_path")]:
        with pytest.raises(SystemExit) as stop:
            tool.main([str(tmp_path / "out"), *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
