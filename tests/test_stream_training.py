"""Streaming data in real runs: a folder's photos are read a photo at a time (its
headers first), ``--eval`` on a folder holds one photo at a time, a run resumes
bit-identically across chunk boundaries, and a photo that fails to decode mid-run is one
line of error after a checkpoint that loses no step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from n2ngraph.app import data as datasets
from n2ngraph.app import folder, images, pairs
from n2ngraph.app.checkpoint import load_checkpoint
from n2ngraph.app.cli import main
from n2ngraph.app.folder import PhotoFolder

from helpers import ROOT, fails

SPEC = str(ROOT / "specs" / "noise2noise.yaml")
TINY = ["--batch", "4", "--crop", "16", "--val-count", "8", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _threads_restored():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_photos(where, count: int, size=(24, 32)) -> list[str]:
    where.mkdir(exist_ok=True)
    rng = np.random.default_rng(count)
    names = [f"{i:03d}.png" for i in range(count)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(where / name)
    return names


def counted_loads(monkeypatch) -> list[str]:
    loads = []
    real = folder.load_photo
    monkeypatch.setattr(folder, "load_photo", lambda path: loads.append(path.name) or real(path))
    return loads


# ---- a folder, a photo at a time ----------------------------------------------------------


def test_a_folder_reads_headers_first_and_decodes_a_photo_when_asked(tmp_path, monkeypatch):
    names = write_photos(tmp_path, 4)
    loads = counted_loads(monkeypatch)
    photos = PhotoFolder(tmp_path)
    assert list(photos) == names and loads == []
    assert photos.shape_of(names[1]) == (3, 24, 32)
    assert torch.equal(photos[names[1]], datasets.load_photo(tmp_path / names[1]))
    photos[names[1]]
    assert loads == [names[1]]  # kept: decoded once
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(datasets.DataError, match="notes.png: not an image"):
        PhotoFolder(tmp_path)  # found before any photo is decoded


def test_the_cache_keeps_the_latest_photos_up_to_its_bytes(tmp_path, monkeypatch):
    names = write_photos(tmp_path, 4)
    loads = counted_loads(monkeypatch)
    one = 3 * 24 * 32
    photos = PhotoFolder(tmp_path, cache_bytes=2 * one + 100)
    for name in names[:3] + names[1:3]:
        photos[name]
    assert loads == names[:3] and photos.cached_bytes() == 2 * one  # the first was let go
    photos[names[0]]
    assert loads == names[:3] + names[:1]
    none = PhotoFolder(tmp_path, cache_bytes=0)
    assert torch.equal(none[names[0]], photos[names[0]]) and none.cached_bytes() == 0


def test_eval_on_a_folder_decodes_each_photo_after_the_last_is_done(tmp_path, monkeypatch,
                                                                    capsys):
    names = write_photos(tmp_path / "photos", 3, size=(20, 24))
    run = tmp_path / "run"
    assert main([SPEC, "--train", "--run", str(run), "--epochs", "1", "--pairs", "8", *TINY]) == 0
    events = []
    real_load, real_denoise = folder.load_photo, images.denoise
    monkeypatch.setattr(folder, "load_photo",
                        lambda path: events.append(("read", path.name)) or real_load(path))
    monkeypatch.setattr(images, "denoise",
                        lambda *a, **k: events.append(("denoised",)) or real_denoise(*a, **k))
    assert main([SPEC, "--eval", "--data", str(tmp_path / "photos"), "--noise", "gaussian:25",
                 "--weights", str(run / "last.safetensors"), "--no-progress"]) == 0
    assert events == [e for name in names for e in (("read", name), ("denoised",))]
    assert "3 photos in" in capsys.readouterr().out


# ---- runs ---------------------------------------------------------------------------------


def _params_and_buffers(run):
    params, buffers, state, _ = load_checkpoint(run / "last.safetensors")
    return {**params, **{f"buffer {k}": v for k, v in buffers.items()}}, state


@pytest.mark.parametrize("data", ["photos", "embedded"])
def test_a_run_resumes_bit_identically_across_chunk_boundaries(tmp_path, monkeypatch, data):
    """Chunks of 3 steps, 10 steps an epoch: stopped mid-chunk in epoch 1, again in
    epoch 2, resumed each time; the same weights, optimizer state and losses as a run
    straight through."""
    monkeypatch.setattr(pairs, "CHUNK_PIXELS", 3 * 4 * 16 * 16)
    source = []
    if data == "photos":
        write_photos(tmp_path / "photos", 6, size=(40, 48))
        source = ["--data", str(tmp_path / "photos")]
    args = [SPEC, "--train", "--epochs", "2", "--pairs", "40", "--augment", "--optimizer", "adam",
            *source, *TINY]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*args, "--run", str(straight)]) == 0
    assert main([*args, "--run", str(stopped), "--max-steps", "4"]) == 0  # chunk 1, step 2 of 3
    assert main(["--resume", str(stopped), "--max-steps", "8", "--no-progress"]) == 0  # epoch 2
    assert main(["--resume", str(stopped), "--no-progress"]) == 0
    expected, state = _params_and_buffers(straight)
    got, resumed_state = _params_and_buffers(stopped)
    assert state["optimizer_steps"] == resumed_state["optimizer_steps"] == 20
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert (straight / "metrics.csv").read_text().splitlines()[1].split(",")[1:3] == \
        (stopped / "metrics.csv").read_text().splitlines()[1].split(",")[1:3]


def _truncated(path) -> None:
    """Keeps the header (so the folder is taken for photos) and cuts the pixels."""
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


def test_a_photo_that_does_not_decode_is_one_line_and_the_run_resumes_once_repaired(tmp_path,
                                                                                       capsys):
    photos = tmp_path / "photos"
    names = write_photos(photos, 6, size=(40, 48))  # 004.png is held out for validation
    good = (photos / names[2]).read_bytes()
    _truncated(photos / names[2])
    run = tmp_path / "run"
    err = fails(capsys, [SPEC, "--train", "--run", str(run), "--epochs", "1", "--pairs", "16",
                         "--data", str(photos), *TINY], f"{names[2]}: corrupt or unreadable image",
                f"--resume {run}")
    assert "at epoch 1, step 0" in err
    (photos / names[2]).write_bytes(good)
    assert main(["--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(photos)
    assert len((run / "metrics.csv").read_text().splitlines()) == 2


def test_a_photo_that_stops_decoding_mid_run_loses_no_step(tmp_path, monkeypatch, capsys):
    """The error reaches the loop when it comes to the chunk that failed, the chunks
    drawn before it trained on first; the checkpoint is saved at the step reached."""
    monkeypatch.setattr(pairs, "CHUNK_PIXELS", 4 * 16 * 16)  # a step a chunk
    real = pairs.PhotoPairs.draw

    def failing_at_the_fourth_chunk(self, epoch, chunk, rows=None):
        if chunk == 3:
            raise datasets.DataError("photos/003.png", "corrupt or unreadable image (broken)")
        return real(self, epoch, chunk, rows)

    monkeypatch.setattr(pairs.PhotoPairs, "draw", failing_at_the_fourth_chunk)
    run = tmp_path / "run"
    fails(capsys, [SPEC, "--train", "--run", str(run), "--epochs", "1", "--pairs", "40", *TINY],
          "photos/003.png: corrupt or unreadable image (broken); saved", "at epoch 1, step 3")
    _, state = _params_and_buffers(run)
    assert (state["epoch"], state["step"], state["optimizer_steps"]) == (0, 3, 3)
