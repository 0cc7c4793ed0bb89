"""Training data that streams: an epoch's pairs are drawn a chunk at a time, each chunk
a pure function of (seed, epoch, chunk) (app/pairs.py), by a background thread into a
bounded queue (app/stream.py). Shares of a batch's rows put together are the batch;
the thread's timing changes nothing; its errors reach the training loop; closing the
stream ends the thread. Memory itself is measured in tests/test_stream_memory.py."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from n2ngraph.app import data as datasets
from n2ngraph.app import pairs
from n2ngraph.app.data import DataError, parse_noise
from n2ngraph.app.pairs import EpochPlan, FixedPairs, PhotoPairs, share, whole_epoch
from n2ngraph.app.stream import BatchStream

from helpers import coded_photos, trace

CROP = 8


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 steps of 4 crops of 8x8: an epoch of 40 pairs is 4 chunks, the last
    one short."""
    monkeypatch.setattr(pairs, "CHUNK_PIXELS", 3 * 4 * CROP * CROP)


def photo_pairs(seed=3, pairs_=40, batch=4, noise="gaussian:10", augment=False, photos=None):
    return PhotoPairs(photos or coded_photos(), EpochPlan(pairs_, batch, CROP * CROP), CROP,
                      parse_noise(noise), seed, augment=augment)


def fixed_pairs(n=40, batch=4, seed=3, augment=False):
    a = torch.randint(0, 256, (n, 3, CROP, CROP), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(n))
    return FixedPairs(a, a.flip(-1), EpochPlan(n, batch, CROP * CROP), seed, augment=augment)


def epoch_batches(source, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's batches drawn chunk by chunk in this thread, with no stream."""
    plan, out = source.plan, []
    for chunk in range(plan.chunks):
        a, b = source.draw(epoch, chunk)
        out += list(zip(a, b))
    return out[:plan.steps]


def same(xs, ys) -> bool:
    return len(xs) == len(ys) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                                      for x, y in zip(xs, ys))


# ---- the plan ------------------------------------------------------------------------


def test_an_epoch_is_cut_into_chunks_of_about_a_megapixel():
    plan = EpochPlan(50_000, 4, 32 * 32)  # the seed recipe
    assert (plan.steps, plan.steps_per_chunk, plan.chunks) == (12_500, 256, 49)
    assert plan.chunk_steps(48) == range(12_288, 12_500)
    odd = EpochPlan(10, 4, 16 * 16)
    assert (odd.steps, odd.drawn_steps, odd.chunks) == (2, 3, 1)  # the last pairs: a partial batch
    assert EpochPlan(64, 16, 4096 * 4096).steps_per_chunk == 1  # at least a step
    for bad in [(10, 0, 64), (10, 11, 64), (10, 4, 0)]:
        with pytest.raises(ValueError):
            EpochPlan(*bad)


# ---- chunks: pure functions of (seed, epoch, chunk) ---------------------------------------


def test_a_chunk_is_a_pure_function_of_seed_epoch_and_chunk(small_chunks):
    source = photo_pairs()
    assert source.plan.chunks == 4 and len(source.draw(0, 3)[0]) == 1
    first = source.draw(1, 2)
    photo_pairs().draw(1, 0)  # another source, another chunk drawn first: no matter
    again = photo_pairs().draw(1, 2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for other in (source.draw(0, 2), source.draw(1, 1), photo_pairs(seed=4).draw(1, 2)):
        assert not torch.equal(other[0][:1], first[0][:1])
    assert first[0].shape == (3, 4, 3, CROP, CROP) and first[0].dtype == torch.uint8
    assert not torch.equal(first[0][:, 0], first[0][:, 1])  # each row its own draws


def test_a_row_of_a_chunk_is_training_pairs_drawn_by_its_generator(small_chunks):
    """Row j of a chunk draws as data.training_pairs does (crops, views, turns), from its
    own generator."""
    a, b = photo_pairs(augment=True).draw(1, 2)
    for row in range(4):
        x, y = datasets.training_pairs(coded_photos(), len(a), CROP, "gaussian:10",
                                       pairs.row_generator(3, 1, 2, row), augment=True)
        assert torch.equal(a[:, row], x) and torch.equal(b[:, row], y)


def test_pairs_are_two_noisy_views_of_real_crops(small_chunks):
    photos = coded_photos()
    a, b = photo_pairs(noise="none", photos=photos).draw(0, 1)
    assert torch.equal(a, b)
    found = trace(a.flatten(0, 1), photos)
    assert len({number for number, _, _ in found}) == 3
    noisy_a, noisy_b = photo_pairs(photos=photos).draw(0, 1)
    assert (noisy_a != noisy_b).float().mean() > 0.5  # independent views
    assert (noisy_a.float() - a.float()).abs().mean() < 12  # of the same crops


@pytest.mark.parametrize("make", [photo_pairs, lambda: photo_pairs(augment=True),
                                  lambda: fixed_pairs(augment=True), fixed_pairs],
                         ids=["photos", "photos-augmented", "fixed-augmented", "fixed"])
def test_the_shares_of_a_batch_put_together_are_the_batch(small_chunks, make):
    """What each of R data-parallel ranks draws (its rows of every batch) is what one
    process draws, split: no rank draws another's rows to get its own."""
    source = make()
    for chunk in range(source.plan.chunks):
        whole = source.draw(1, chunk)
        for ranks in (2, 4):
            shares = [source.draw(1, chunk, share(rank, ranks, 4)) for rank in range(ranks)]
            for view in (0, 1):
                assert torch.equal(torch.cat([s[view] for s in shares], dim=1), whole[view])
    assert share(1, 2, 4) == range(2, 4)
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        share(0, 3, 4)
    with pytest.raises(ValueError):
        source.draw(0, 0, range(3, 5))


def test_a_large_folder_is_cropped_a_few_photos_per_chunk(small_chunks):
    """A folder of more than PHOTOS_PER_CHUNK photos: each chunk decodes at most that
    many, and over an epoch every photo is used."""
    photos = coded_photos([(16 + n % 5, 20) for n in range(40)])
    source = photo_pairs(noise="none", photos=photos, pairs_=400)
    used = set()
    for chunk in range(source.plan.chunks):
        a, _ = source.draw(0, chunk)
        numbers = {number for number, _, _ in trace(a.flatten(0, 1), photos)}
        assert len(numbers) <= pairs.PHOTOS_PER_CHUNK
        assert numbers <= {int(name[1:]) for name in source.chunk_photos(0, chunk)}
        used |= numbers
    assert used == set(range(40))


# ---- fixed pairs (the course's .pkl) --------------------------------------------------------


def test_fixed_pairs_keep_pairs_together_and_drop_the_partial_batch():
    n = 50_000
    a = torch.arange(n).view(n, 1, 1, 1)
    source = FixedPairs(a, a + 1, EpochPlan(n, 4, 32 * 32), seed=0)
    steps = epoch_batches(source, 0)
    assert len(steps) == 12_500
    assert all(x.shape == (4, 1, 1, 1) and torch.equal(y, x + 1) for x, y in steps)
    assert torch.cat([x for x, _ in steps]).flatten().sort().values.equal(torch.arange(n))
    short = epoch_batches(FixedPairs(a[:10], a[:10], EpochPlan(10, 4, 1), seed=0), 0)
    assert len(short) == 2  # 10 pairs: 2 batches of 4, the last 2 dropped
    assert len(set(torch.cat([x for x, _ in short]).flatten().tolist())) == 8
    with pytest.raises(ValueError):
        FixedPairs(a[:10], a[:9], EpochPlan(9, 4, 1), seed=0)


def test_fixed_pairs_come_in_the_order_the_whole_epoch_shuffle_always_gave(small_chunks):
    """Unaugmented, the course's pairs train in the same order as before streaming: the
    permutation of seed x 1,000,003 + epoch + 500,000, cut into batches."""
    source = fixed_pairs()
    for epoch in (0, 2):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch
                                                                              + 500_000))
        expected = [(source.a[rows], source.b[rows]) for rows in order.view(10, 4)]
        assert same(epoch_batches(source, epoch), expected)
    assert not same(epoch_batches(source, 0), epoch_batches(source, 1))
    assert not same(epoch_batches(source, 0), epoch_batches(fixed_pairs(seed=4), 0))


def test_the_whole_epoch_is_the_trained_batches_and_the_partial_one(small_chunks):
    """--export writes every pair: the batches a run trains on, then the pairs of the
    partial batch it does not."""
    source = photo_pairs(pairs_=42)
    a, b = whole_epoch(source, 1)
    assert a.shape == b.shape == (42, 3, CROP, CROP)
    trained = epoch_batches(source, 1)
    assert len(trained) == 10
    assert torch.equal(a[:40], torch.cat([x for x, _ in trained]))
    assert torch.equal(b[:40], torch.cat([y for _, y in trained]))


# ---- the stream: a background thread, a bounded queue -------------------------------------


def _slowly(batches, pause: float):
    out = []
    for batch in batches:
        out.append(batch)
        time.sleep(random.random() * pause)
    return out


def test_the_stream_gives_the_same_batches_whatever_the_timing(small_chunks):
    source = photo_pairs(augment=True)
    expected = [epoch_batches(source, e) for e in range(2)]
    random.seed(0)
    for depth, pause in ((1, 0.01), (4, 0.0)):
        with BatchStream(source, epochs=2, depth=depth) as stream:
            assert [same(_slowly(stream.epoch(e), pause), expected[e]) for e in range(2)] == [True] * 2


def test_a_stream_started_mid_epoch_gives_the_rest_of_it(small_chunks):
    """A resumed run starts mid-chunk; a run asking out of turn restarts the thread."""
    source = photo_pairs()
    expected = epoch_batches(source, 1)
    with BatchStream(source, epochs=3) as stream:
        assert same(list(stream.epoch(1, first_step=5)), expected[5:])
        assert same(list(stream.epoch(1, first_step=9)), expected[9:])  # asked for again
        assert same(list(stream.epoch(2)), epoch_batches(source, 2))
        assert list(stream.epoch(1, first_step=10)) == []  # the epoch was over


class Recording:
    """A source that records the chunks drawn, and fails at ``fail_at`` with ``error``."""

    def __init__(self, source, fail_at=None, error=None):
        self.source, self.plan, self.drawn = source, source.plan, []
        self.fail_at, self.error = fail_at, error

    def draw(self, epoch, chunk, rows=None):
        if (epoch, chunk) == self.fail_at:
            raise self.error
        self.drawn.append((epoch, chunk))
        return self.source.draw(epoch, chunk, rows)


def _data_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "n2ngraph-data"]


def test_the_thread_draws_at_most_depth_chunks_ahead(small_chunks):
    source = Recording(photo_pairs(pairs_=400))  # 34 chunks an epoch
    with BatchStream(source, epochs=2, depth=2) as stream:
        batches = stream.epoch(0)
        next(batches)  # chunk 0 taken, its first batch trained on
        deadline = time.monotonic() + 10
        while len(source.drawn) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # time to draw on, were the queue not bounded
        assert source.drawn == [(0, 0), (0, 1), (0, 2), (0, 3)]  # 2 queued, 1 drawn, waiting
        assert len(_data_threads()) == 1
    assert _data_threads() == []  # closed: the thread ended


@pytest.mark.parametrize("error", [DataError("photos/b.png", "corrupt or unreadable image (x)"),
                                   MemoryError("out of memory")], ids=["corrupt", "memory"])
def test_an_error_in_the_thread_is_raised_where_the_batches_are_taken(small_chunks, error):
    source = Recording(photo_pairs(), fail_at=(0, 2), error=error)
    taken = []
    with BatchStream(source, epochs=1) as stream:
        with pytest.raises(type(error)) as raised:
            for batch in stream.epoch(0):
                taken.append(batch)
    assert raised.value is error and str(raised.value) == str(error)
    assert same(taken, epoch_batches(source.source, 0)[:6])  # chunks 0 and 1, then the error
    assert _data_threads() == []


def test_closing_a_stream_mid_epoch_ends_its_thread_at_once(small_chunks):
    with BatchStream(photo_pairs(pairs_=4000), epochs=5) as stream:
        next(stream.epoch(0))
        started = time.monotonic()
    assert _data_threads() == [] and time.monotonic() - started < 5
