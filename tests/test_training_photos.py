"""tools/training_photos: the folder it writes trains on what it says and holds out the
same validation photos as the default data. No download here: the wheels are stand-ins
built in the test, with the same member paths and encodings as the real ones."""

from __future__ import annotations

import bz2
import importlib.machinery
import importlib.util
import io
import sys
import zipfile

import numpy as np
import pytest
import torch

from helpers import ROOT
from n2ngraph.app import data as datasets
from n2ngraph.app.config import TrainConfig
from n2ngraph.app.train import held_out, prepare_data
from n2ngraph.compiler.spec import OptimizerSpec, TrainSpec


def _load_tool():
    loader = importlib.machinery.SourceFileLoader("training_photos", str(ROOT / "tools" / "training_photos"))
    spec = importlib.util.spec_from_loader("training_photos", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.mark.parametrize("train_count", range(8, 13))
def test_validation_photos_land_where_the_runner_holds_out(train_count):
    train = [f"t{i}" for i in range(train_count)]
    names = tool.ordered(train, ["coffee", "rocket"])
    assert held_out(names) == ["coffee", "rocket"]
    assert [n for n in names if n.startswith("t")] == train  # training order kept


@pytest.mark.parametrize("train_count", [6, 7, 13, 20])
def test_too_few_or_too_many_photos_for_the_hold_out_rule_is_refused(train_count):
    with pytest.raises(ValueError, match="2 validation photos need between 10 and 14"):
        tool.ordered([f"t{i}" for i in range(train_count)], ["coffee", "rocket"])


def _fake_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as wheel:
        for name, raw in members.items():
            wheel.writestr(name, raw)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")  # lossless, so the test can compare
    return out.getvalue()


def test_photos_are_read_out_of_wheels_without_downloading(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    china = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    flower = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    _fake_wheel(tmp_path / "scikit_learn-9.9-py3-none-any.whl",
                {"sklearn/datasets/images/china.jpg": _png(china),
                 "sklearn/datasets/images/flower.jpg": _png(flower)})
    _fake_wheel(tmp_path / "scipy-1.9.3-cp310-cp310-manylinux2014_x86_64.whl",
                {"scipy/misc/face.dat": bz2.compress(face.tobytes())})
    monkeypatch.setattr(tool.subprocess, "run", lambda *a, **k: pytest.fail("tried to download"))
    photos = tool.wheel_photos(tmp_path)
    assert sorted(photos) == ["china", "face", "flower"]
    np.testing.assert_array_equal(photos["face"][0], face)
    np.testing.assert_array_equal(photos["china"][0], china)
    np.testing.assert_array_equal(photos["flower"][0], flower)
    assert "CC BY 2.0" in photos["china"][1]
    assert sorted(tool.wheel_photos(tmp_path, frozenset({"face"}))) == ["china", "flower"]


def test_a_failed_download_names_the_package(tmp_path, monkeypatch):
    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for scipy==1.9.3"

    monkeypatch.setattr(tool.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(SystemExit, match=r"could not download scipy==1\.9\.3.*No matching"):
        tool.wheel_for("scipy==1.9.3", tmp_path)


def test_the_written_folder_trains_on_all_but_the_validation_photos(tmp_path):
    rng = np.random.default_rng(1)
    names = ["astronaut", "coffee", "rocket"] + [f"extra{i}" for i in range(8)]
    photos = {n: (rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), f"source of {n}")
              for n in names}
    written = tool.write_folder(tmp_path, photos, ["coffee", "rocket"])
    assert len(written) == 11 and all(p.suffix == ".png" for p in written)
    loaded = datasets.load_folder(tmp_path)
    for path in written:
        name = path.stem.split("_", 1)[1]
        assert torch.equal(loaded[path.name], torch.from_numpy(photos[name][0]).permute(2, 0, 1))
    sources = (tmp_path / "SOURCES.txt").read_text().splitlines()
    assert len(sources) == 12 and "04_coffee.png\t48x40\tvalidation\tsource of coffee" in sources
    recipe = TrainSpec(epochs=1, batch=2, optimizer=OptimizerSpec(lr=0.1), pairs=4, seed=0, crop=16)
    data = prepare_data(TrainConfig(recipe, data=str(tmp_path), val_count=4))
    assert f"from 9 of the 11 photos in {tmp_path}" in data.description
    assert "validation: 4 crops of 04_coffee.png, 09_rocket.png" in data.description


def test_an_installed_package_is_read_before_any_wheel(tmp_path, monkeypatch):
    """A package on the path with the image file is used as it is: no wheel, no pip."""
    china = np.full((20, 30, 3), 7, dtype=np.uint8)
    images = tmp_path / "site" / "sklearn" / "datasets" / "images"
    images.mkdir(parents=True)
    (tmp_path / "site" / "sklearn" / "__init__.py").write_text("")
    (images / "china.jpg").write_bytes(_png(china))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "sklearn", raising=False)
    assert tool.installed_file("sklearn/datasets/images/china.jpg") == images / "china.jpg"
    assert tool.installed_file("sklearn/datasets/images/flower.jpg") is None
    assert tool.installed_file("no_such_package_here/x.jpg") is None


def test_a_folder_that_is_not_empty_is_refused_before_any_work(tmp_path, capsys):
    """Another photo in it would shift which files the runner holds out."""
    (tmp_path / "mine.png").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        tool.main([str(tmp_path)])
    assert stop.value.code == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.png"]


def test_unknown_or_validation_names_in_without_are_refused(tmp_path, capsys):
    for without, message in [("retina,nosuch", "unknown photo(s) nosuch"),
                             ("coffee", "are the validation photos")]:
        with pytest.raises(SystemExit) as stop:
            tool.main([str(tmp_path / "out"), "--without", without])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
