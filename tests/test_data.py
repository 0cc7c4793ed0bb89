"""The data layer: photos, noise models, Noise2Noise pairs, the course's .pkl files,
atomic writes, PSNR. Every bad file must give a DataError that names the file."""

from __future__ import annotations

import io
import math
import os
import pickle

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from n2ngraph.app import data, fileio
from n2ngraph.app.data import DataError, Noise, parse_noise
from n2ngraph.app.metrics import psnr, psnr_per_image, psnr_uint8

from helpers import coded_photos, trace

FEW = settings(max_examples=25, deadline=None)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grey(value: int = 128, size: int = 96) -> torch.Tensor:
    return torch.full((3, size, size), value, dtype=torch.uint8)


def no_temp_files(folder) -> bool:
    return not [p for p in os.listdir(folder) if p.endswith(".tmp")]


# --------------------------------------------------------------------------- embedded

def test_embedded_photos_are_uint8_rgb_chw():
    photos = data.embedded_photos()
    assert tuple(photos) == data.EMBEDDED
    for name, photo in photos.items():
        assert photo.dtype == torch.uint8 and photo.dim() == 3 and photo.shape[0] == 3, name
        assert min(photo.shape[1:]) >= 256, name
        assert photo.float().std() > 10, name  # a photo, not a blank
    assert photos["motorcycle_left"].shape == photos["motorcycle_right"].shape


def test_embedded_photos_are_copies():
    first = data.embedded_photos()
    first["astronaut"].zero_()
    assert data.embedded_photos()["astronaut"].float().mean() > 10


def test_split_is_by_image_and_disjoint():
    train, val = data.embedded_split()
    assert set(val) == set(data.VALIDATION_PHOTOS)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(data.EMBEDDED)
    assert {"motorcycle_left", "motorcycle_right"} <= set(train)  # the stereo pair together


# --------------------------------------------------------------------------- noise

def test_gaussian_std_and_quantisation():
    clean = grey(128, 128)
    noisy = parse_noise("gaussian:25").apply(clean, gen())
    assert noisy.dtype == torch.uint8 and noisy.shape == clean.shape
    diff = noisy.float() - 128
    assert abs(diff.std().item() - 25) < 0.5
    assert abs(diff.mean().item()) < 0.5
    assert noisy.unique().numel() > 100  # real noise, spread over many 8-bit levels


def test_gaussian_clips_to_the_8bit_range():
    noisy = parse_noise("gaussian:100").apply(grey(0), gen())
    assert noisy.min() == 0 and noisy.max() == 255
    assert (noisy == 0).float().mean() > 0.4  # about half the draws fell below 0


def test_gaussian_zero_and_none_are_identity():
    clean = data.random_crops(coded_photos(), 4, 16, gen())
    for text in ("gaussian:0", "none"):
        out = parse_noise(text).apply(clean, gen())
        assert torch.equal(out, clean)
        assert out.data_ptr() != clean.data_ptr()  # a copy, not an alias


def test_poisson_statistics():
    peak, value = 30.0, 128
    noisy = parse_noise("poisson:30").apply(grey(value, 128), gen()).double()
    # out = round(k * 255 / peak), k ~ Poisson(value / 255 * peak)
    assert abs(noisy.mean().item() - value) < 1.0
    expected_std = math.sqrt(value * 255 / peak)  # (255/peak)^2 * lambda
    assert abs(noisy.std().item() - expected_std) / expected_std < 0.03
    levels = torch.round(torch.arange(0, 31) * 255 / peak)
    assert torch.isin(noisy.unique(), levels).all()  # whole photon counts, scaled
    assert torch.equal(parse_noise("poisson:5").apply(grey(0), gen()), grey(0))  # dark stays dark


def test_poisson_noise_grows_with_brightness():
    noise = parse_noise("poisson:20")
    dim = noise.apply(grey(30), gen()).float().std()
    bright = noise.apply(grey(200), gen()).float().std()
    assert bright > 2 * dim


def test_bernoulli_drops_whole_pixels():
    clean = torch.randint(1, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=gen(3))
    noisy = parse_noise("bernoulli:0.5").apply(clean, gen())
    dropped = noisy == 0
    assert torch.equal(dropped[:, 0], dropped[:, 1]) and torch.equal(dropped[:, 0], dropped[:, 2])
    assert abs(dropped.float().mean().item() - 0.5) < 0.02
    assert torch.equal(noisy[~dropped], clean[~dropped])  # kept pixels are untouched


def test_noise_is_deterministic_given_the_generator():
    for text in ("gaussian:10", "poisson:50", "bernoulli:0.3"):
        noise = parse_noise(text)
        assert torch.equal(noise.apply(grey(), gen(7)), noise.apply(grey(), gen(7)))
        assert not torch.equal(noise.apply(grey(), gen(7)), noise.apply(grey(), gen(8)))


def test_noise_apply_wants_uint8():
    with pytest.raises(TypeError, match="uint8"):
        parse_noise("gaussian:5").apply(grey().float(), gen())


levels = {
    "gaussian": st.floats(0, 300, allow_nan=False),
    "poisson": st.floats(1e-3, 1e5, allow_nan=False),
    "bernoulli": st.floats(0, 1, exclude_max=True, allow_nan=False),
}


@FEW
@given(st.sampled_from(sorted(levels)).flatmap(lambda k: st.tuples(st.just(k), levels[k])))
def test_noise_string_round_trips(kind_level):
    noise = Noise(*kind_level)
    assert parse_noise(str(noise)) == noise
    assert str(parse_noise(f"  {noise.kind.upper()} : {noise.level!r} ")) == str(noise)


def test_noise_strings_read_as_written():
    assert str(parse_noise("gaussian:25")) == "gaussian:25"
    assert str(parse_noise("bernoulli:0.5")) == "bernoulli:0.5"
    assert parse_noise("poisson:30") == Noise("poisson", 30)
    assert str(parse_noise("none")) == "none"


@pytest.mark.parametrize("text", [
    "", "gaussian", "gaussian:", "gaussian:-1", "gaussian:abc", "gaussian:nan", "gaussian:inf",
    "poisson:0", "poisson:-3", "bernoulli:1", "bernoulli:1.5", "bernoulli:-0.1", "none:3",
    "salt:3", "gaussian:25:3", "speckle",
])
def test_bad_noise_strings(text):
    with pytest.raises(ValueError, match="accepted: gaussian:SIGMA"):
        parse_noise(text)


@FEW
@given(st.text(max_size=20))
def test_any_string_parses_or_says_what_is_accepted(text):
    try:
        noise = parse_noise(text)
    except ValueError as exc:
        assert "accepted" in str(exc) and "poisson:PEAK" in str(exc)
    else:
        assert parse_noise(str(noise)) == noise


def test_noise_is_frozen_and_validated():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Noise("gaussian", 3).level = 4
    with pytest.raises(ValueError):
        Noise("gaussian", -1)
    with pytest.raises(ValueError, match="unknown noise kind"):
        Noise("salt", 1)


# --------------------------------------------------------------------------- crops and pairs

@FEW
@given(crop=st.integers(1, 32), count=st.integers(0, 12), seed=st.integers(0, 2**31))
def test_crops_are_real_windows(crop, count, seed):
    photos = coded_photos()
    crops = data.random_crops(photos, count, crop, gen(seed))
    assert crops.shape == (count, 3, crop, crop) and crops.dtype == torch.uint8
    trace(crops, photos)


def test_crops_choose_photos_uniformly_and_reach_every_place():
    photos = coded_photos(((40, 40), (200, 200)))
    found = trace(data.random_crops(photos, 2000, 32, gen()), photos)
    share = sum(number == 0 for number, _, _ in found) / len(found)
    assert 0.45 < share < 0.55  # uniform over photos, not by area (that would be 4%)
    small = {(top, left) for number, top, left in found if number == 0}
    assert len(small) == 81  # all 9x9 placements of a 32 crop in a 40x40 photo


def test_crops_do_not_depend_on_dict_order():
    photos = coded_photos()
    backwards = dict(reversed(list(photos.items())))
    assert torch.equal(data.random_crops(photos, 20, 8, gen()),
                       data.random_crops(backwards, 20, 8, gen()))


def test_photo_smaller_than_crop():
    photos = {"big": grey(size=64), "tiny": grey(size=20)}
    with pytest.raises(DataError, match="tiny: photo is 20x20, smaller than the 32x32 crop"):
        data.training_pairs(photos, 10, 32, parse_noise("gaussian:5"), gen())


def test_pairs_are_two_noisy_views_of_one_patch():
    # a textured photo kept away from 0 and 255, so sigma-10 noise is (almost) never clipped
    photo = torch.randint(70, 186, (3, 80, 80), dtype=torch.uint8, generator=gen(5))
    photos = {"textured": photo}
    a, b = data.training_pairs(photos, 3000, 16, parse_noise("gaussian:10"), gen(1))
    clean = data.random_crops(photos, 3000, 16, gen(1))  # the crops drawn first
    assert a.shape == b.shape == (3000, 3, 16, 16) and a.dtype == b.dtype == torch.uint8
    diff = a.double() - b.double()
    assert abs(diff.mean().item()) < 0.05
    assert abs(diff.std().item() - math.sqrt(2) * 10) < 0.15
    assert (a != b).float().mean() > 0.9  # independent draws
    mean = (a.double() + b.double()) / 2
    assert abs((mean - clean.double()).mean().item()) < 0.05
    assert abs((mean - clean.double()).std().item() - 10 / math.sqrt(2)) < 0.1


def test_noise_none_pairs_are_the_clean_crops():
    photos = coded_photos()
    a, b = data.training_pairs(photos, 50, 12, "none", gen(2))  # a string is parsed
    assert torch.equal(a, b) and torch.equal(a, data.random_crops(photos, 50, 12, gen(2)))


def test_pairs_are_deterministic_given_the_seed():
    train, _ = data.embedded_split()
    noise = parse_noise("gaussian:25")
    first = data.training_pairs(train, 200, 32, noise, gen(4))
    again = data.training_pairs(train, 200, 32, noise, gen(4))
    other = data.training_pairs(train, 200, 32, noise, gen(5))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_pairs_span_chunks_consistently():
    # more than one noising chunk: the seams must not repeat noise
    photos = {"grey": grey(128, 40)}
    a, b = data.training_pairs(photos, data._CHUNK + 10, 4, parse_noise("gaussian:20"), gen())
    assert not torch.equal(a[:10], a[data._CHUNK:])
    assert not torch.equal(a[:10], b[:10])


def test_validation_set_is_fixed_by_seed():
    photos = coded_photos()
    noise = parse_noise("gaussian:30")
    noisy, clean = data.validation_set(photos, 40, 16, noise, seed=11)
    noisy2, clean2 = data.validation_set(photos, 40, 16, noise, seed=11)
    assert torch.equal(noisy, noisy2) and torch.equal(clean, clean2)
    assert not torch.equal(noisy, clean)
    trace(clean, photos)
    assert not torch.equal(data.validation_set(photos, 40, 16, noise, seed=12)[1], clean)


# --------------------------------------------------------------------------- .pkl pairs

def some_pairs(n=5, size=32):
    a = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen(1))
    return a, torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen(2))


def test_pkl_round_trip(tmp_path):
    a, b = some_pairs()
    path = tmp_path / "train_data.pkl"
    data.save_pairs(path, a, b)
    a2, b2 = data.load_pairs(path)
    assert torch.equal(a, a2) and torch.equal(b, b2) and a2.dtype == torch.uint8
    # the course's own reader gets a plain tuple of tensors
    plain = torch.load(path, weights_only=True)
    assert isinstance(plain, tuple) and len(plain) == 2
    assert no_temp_files(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~fileio._umask()


def test_pkl_written_by_the_course_loads(tmp_path):
    a, b = some_pairs()
    for i, container in enumerate((tuple, list)):
        path = tmp_path / f"val{i}.pkl"
        torch.save(container((a, b)), path)
        assert torch.equal(data.load_pairs(str(path))[1], b)


def test_save_pairs_of_a_slice_stores_only_the_slice(tmp_path):
    a, b = some_pairs(n=400)
    data.save_pairs(tmp_path / "small.pkl", a[:4], b[:4])
    data.save_pairs(tmp_path / "full.pkl", a, b)
    assert (tmp_path / "small.pkl").stat().st_size * 20 < (tmp_path / "full.pkl").stat().st_size
    assert torch.equal(data.load_pairs(tmp_path / "small.pkl")[0], a[:4])


class Unsafe:
    pass


def write_bad_pkl(path, case):
    a, b = some_pairs()
    if case == "corrupt":
        path.write_bytes(b"\x80\x02 this is not a torch file \x00\xff" * 4)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        buffer = io.BytesIO()
        torch.save((a, b), buffer)
        path.write_bytes(buffer.getvalue()[:300])
    elif case == "unsafe pickle":
        path.write_bytes(pickle.dumps((Unsafe(), Unsafe())))
    else:
        torch.save(case, path)


A, B = some_pairs()
BAD_PKL = {
    "corrupt": "not a torch file",
    "empty": "not a torch file",
    "truncated": "not a torch file",
    "unsafe pickle": "not a torch file",
    "dict": ({"a": A, "b": B}, "expected a pair (a, b) of tensors, got dict"),
    "one tensor": (A, "got uint8 tensor of shape (5, 3, 32, 32)"),
    "three tensors": ((A, B, A), "got tuple of 3"),
    "tensor and int": ((A, 3), "got tuple of 2 (uint8 tensor of shape (5, 3, 32, 32), int)"),
    "float": ((A.float(), B),
              "first tensor is float32 tensor of shape (5, 3, 32, 32), expected uint8"),
    "int64": ((A, B.long()), "second tensor is int64"),
    "3-D": ((A[0], B[0]),
            "first tensor is uint8 tensor of shape (3, 32, 32), expected (N, 3, H, W)"),
    "1 channel": ((A[:, :1], B[:, :1]), "expected (N, 3, H, W)"),
    "no pairs": ((A[:0], B[:0]), "expected (N, 3, H, W) with N, H, W >= 1"),
    "shapes differ": ((A, B[:4]), "differ in shape: (5, 3, 32, 32) vs (4, 3, 32, 32)"),
}


@pytest.mark.parametrize("case", sorted(BAD_PKL))
def test_bad_pkl_gives_data_error_naming_the_file(tmp_path, case):
    expected = BAD_PKL[case]
    path = tmp_path / f"bad {case}.pkl"
    write_bad_pkl(path, case if isinstance(expected, str) else expected[0])
    message = expected if isinstance(expected, str) else expected[1]
    with pytest.raises(DataError) as caught:
        data.load_pairs(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_pkl_and_directory(tmp_path):
    with pytest.raises(DataError, match="nowhere.pkl: no such file"):
        data.load_pairs(tmp_path / "nowhere.pkl")
    with pytest.raises(DataError, match="is a directory"):
        data.load_pairs(tmp_path)


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "train_data.pkl"
    a, b = some_pairs()
    data.save_pairs(path, a, b)
    before = path.read_bytes()
    with pytest.raises(DataError, match="train_data.pkl: first tensor is float32"):
        data.save_pairs(path, a.float(), b)
    with pytest.raises(DataError, match="train_data.pkl: expected a pair"):
        data.save_pairs(path, a.numpy(), b)
    assert path.read_bytes() == before and no_temp_files(tmp_path)


def test_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "pairs.pkl"
    a, b = some_pairs()
    data.save_pairs(path, a, b)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a file")
        raise RuntimeError("power cut")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        data.save_pairs(path, b, a)
    assert path.read_bytes() == before and no_temp_files(tmp_path)

    def disk_full(obj, f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(DataError, match=r"pairs.pkl: cannot write \(No space left on device\)"):
        data.save_pairs(path, b, a)
    assert path.read_bytes() == before and no_temp_files(tmp_path)


def test_save_into_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="cannot write"):
        data.save_pairs(tmp_path / "no" / "such" / "p.pkl", *some_pairs())


def test_data_error_pickles():
    error = pickle.loads(pickle.dumps(DataError("x.png", "not an image")))
    assert str(error) == "x.png: not an image" and error.file == "x.png"


# --------------------------------------------------------------------------- photo files

def test_photo_round_trip(tmp_path):
    texture = torch.randint(0, 100, (3, 40, 40), dtype=torch.uint8, generator=gen())
    photo = data.random_crops({"p": grey(size=40) + texture}, 1, 20, gen())[0]
    photo = torch.cat([photo, photo[:, :5]], dim=1)  # not square, to catch H/W mix-ups
    path = tmp_path / "out.png"
    data.save_photo(path, photo)
    assert torch.equal(data.load_photo(path), photo)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I;16", "CMYK"])
def test_photo_modes_become_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((6, 7), 257 * 200, dtype=np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    photo = data.load_photo(path)
    assert photo.shape == (3, 6, 7) and photo.dtype == torch.uint8
    if mode in ("L", "LA", "1", "I;16"):
        assert torch.equal(photo[0], photo[1]) and torch.equal(photo[0], photo[2])
    if mode == "I;16":
        assert (photo == 200).all()  # scaled from 16 bits, not clipped to white
    if mode == "RGBA":
        assert torch.equal(photo, torch.from_numpy(np.array(rgb)).permute(2, 0, 1))


def test_photo_exif_orientation(tmp_path):
    image = Image.fromarray(np.zeros((2, 5, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, to be shown rotated 90 degrees
    image.save(tmp_path / "side.png", exif=exif)
    assert data.load_photo(tmp_path / "side.png").shape == (3, 5, 2)


def test_jpeg_loads(tmp_path):
    Image.fromarray(np.full((8, 9, 3), 90, dtype=np.uint8)).save(tmp_path / "a.JPG")
    photo = data.load_photo(tmp_path / "a.JPG")
    assert photo.shape == (3, 8, 9) and (photo.int() - 90).abs().max() <= 2


def test_bad_photo_files(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(DataError, match=r"notes.png: not an image \(cannot identify image file\)"):
        data.load_photo(tmp_path / "notes.png")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 7).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:-40])
    with pytest.raises(DataError, match="cut.png: corrupt or unreadable image"):
        data.load_photo(tmp_path / "cut.png")
    with pytest.raises(DataError, match="gone.jpg: no such file"):
        data.load_photo(tmp_path / "gone.jpg")
    with pytest.raises(DataError, match="is a directory"):
        data.load_photo(tmp_path)


def test_load_folder(tmp_path):
    for name, value in [("b.png", 1), ("a.jpeg", 2), ("c.BMP", 3)]:
        Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "._b.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "sub").mkdir()
    photos = data.load_folder(tmp_path)
    assert list(photos) == ["a.jpeg", "b.png", "c.BMP"]
    assert photos["b.png"].shape == (3, 4, 4)


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match="empty: no photos in folder"):
        (tmp_path / "empty").mkdir()
        data.load_folder(tmp_path / "empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="texts: no photos in folder"):
        data.load_folder(tmp_path / "texts")
    with pytest.raises(DataError, match="nowhere: no such folder"):
        data.load_folder(tmp_path / "nowhere")
    (tmp_path / "texts" / "broken.png").write_text("x")
    with pytest.raises(DataError, match="broken.png: not an image"):
        data.load_folder(tmp_path / "texts")


def test_failed_photo_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.png"
    data.save_photo(path, grey(size=8))
    before = path.read_bytes()
    for bad in (grey(size=8).float(), grey(size=8)[None], grey(size=8)[:1], "pixels"):
        with pytest.raises(DataError, match="keep.png: cannot save"):
            data.save_photo(path, bad)
    with pytest.raises(DataError, match="keep.jpg: save_photo writes PNG"):
        data.save_photo(tmp_path / "keep.jpg", grey(size=8))
    assert path.read_bytes() == before and no_temp_files(tmp_path)


# --------------------------------------------------------------------------- PSNR

def test_psnr_follows_the_course():
    x = torch.rand(6, 3, 8, 8, generator=gen())
    y = torch.rand(6, 3, 8, 8, generator=gen(1))
    course = torch.stack([-10 * torch.log10(((a - b) ** 2).mean() + 1e-8) for a, b in zip(x, y)])
    assert psnr(x, y) == pytest.approx(course.mean().item(), rel=1e-5)
    assert psnr(x, x) == pytest.approx(80.0)
    assert psnr(x[0], y[0]) == pytest.approx(course[0].item(), rel=1e-5)  # one (C, H, W) image


def test_psnr_averages_per_image_not_pooled():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])  # 20 dB, 40 dB
    assert psnr_per_image(x, y).tolist() == pytest.approx([20.0, 40.0], abs=1e-3)  # 1e-8: -4e-4 dB
    assert psnr(x, y) == pytest.approx(30.0, abs=1e-3)  # the pooled MSE would give 23.0 dB


def test_psnr_uint8_and_peak_agree():
    a, b = some_pairs()
    on_unit = psnr(a.double() / 255, b.double() / 255)
    assert psnr_uint8(a, b) == pytest.approx(on_unit, rel=1e-12)
    assert psnr(a.float(), b.float(), peak=255.0) == pytest.approx(on_unit, rel=1e-6)


def test_psnr_refuses_what_would_mislead():
    a, b = some_pairs()
    with pytest.raises(ValueError, match="psnr_uint8"):
        psnr(a, b)  # uint8 subtraction would wrap around
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a[:2].float(), b[:3].float())
    with pytest.raises(ValueError, match="uint8"):
        psnr_uint8(a.float(), b.float())
