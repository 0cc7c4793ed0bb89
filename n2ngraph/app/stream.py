"""A run's batches, drawn ahead by a background thread into a bounded queue.

The thread draws chunks (pairs.py) in training order, from where the run stands to its
last epoch, and waits while ``DEPTH`` of them wait to be trained on: memory holds at
most ``DEPTH`` + 2 chunks (those queued, the one being drawn, the one being trained on),
whatever the number of pairs. What a chunk holds depends on (seed, epoch, chunk) alone,
so drawing ahead, and the thread's timing, change nothing a run computes.

An error in the thread (a photo that does not decode, memory that runs out) is raised
again, the same exception, in the thread that asks for the next batch; the thread stops
when the stream is closed (a ``with`` block's end, however it ends) and is a daemon, so
it never holds up the process's exit.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import torch

DEPTH = 2
"""Chunks drawn ahead and waiting: enough for the thread to keep ahead of the steps."""

CLOSE_WAIT = 30.0
"""Seconds ``close`` waits for the thread to finish the chunk it is drawing."""

_POLL = 0.05  # seconds between looks at the stop flag while waiting on the queue


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class BatchStream:
    """The batches of ``source`` (pairs.PhotoPairs or FixedPairs) for epochs before
    ``epochs``, the rows ``rows`` of each (a rank's share; all when None)."""

    def __init__(self, source, epochs: int, rows: range | None = None, depth: int = DEPTH):
        self.source, self.epochs, self.rows, self.depth = source, epochs, rows, depth
        self._worker: tuple[threading.Thread, threading.Event, queue.Queue] | None = None
        self._next: tuple[int, int] | None = None  # the (epoch, chunk) the queue gives next

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def epoch(self, epoch: int, first_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches ``(a, b)`` of ``epoch`` from step ``first_step`` on (a resumed run
        starts mid-epoch), uint8 views of the chunk they were drawn in."""
        plan = self.source.plan
        per_chunk = plan.steps_per_chunk
        for chunk in range(first_step // per_chunk, self._trained_chunks()):
            a, b = self._chunk(epoch, chunk)
            first = chunk * per_chunk
            for step in range(max(first, first_step), min(first + len(a), plan.steps)):
                yield a[step - first], b[step - first]

    def _trained_chunks(self) -> int:
        plan = self.source.plan
        return -(-plan.steps // plan.steps_per_chunk)

    def _chunk(self, epoch: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk ``chunk`` of ``epoch`` from the queue, the thread (re)started there if
        it is not the one the queue gives next."""
        if self._next != (epoch, chunk):
            self.close()
            self._start(epoch, chunk)
        got_epoch, got_chunk, a, b = self._take()
        assert (got_epoch, got_chunk) == (epoch, chunk), ((got_epoch, got_chunk), (epoch, chunk))
        self._next = self._after(epoch, chunk)
        return a, b

    def _after(self, epoch: int, chunk: int) -> tuple[int, int]:
        return (epoch, chunk + 1) if chunk + 1 < self._trained_chunks() else (epoch + 1, 0)

    def _start(self, epoch: int, chunk: int) -> None:
        stop, out = threading.Event(), queue.Queue(maxsize=self.depth)
        thread = threading.Thread(target=self._produce, args=(epoch, chunk, stop, out),
                                  name="n2ngraph-data", daemon=True)
        self._worker, self._next = (thread, stop, out), (epoch, chunk)
        thread.start()

    def _produce(self, epoch: int, chunk: int, stop: threading.Event, out: queue.Queue) -> None:
        """The thread: chunks in training order into ``out`` until the last epoch's last
        chunk, an error (handed on), or ``stop``."""
        try:
            while epoch < self.epochs and not stop.is_set():
                a, b = self.source.draw(epoch, chunk, self.rows)
                if not _put(out, (epoch, chunk, a, b), stop):
                    return
                del a, b  # not held while waiting to put the next one
                epoch, chunk = self._after(epoch, chunk)
        except BaseException as error:  # noqa: B036 - handed to the consumer, whatever it is
            _put(out, _Failed(error), stop)

    def _take(self) -> tuple:
        """The next item of the queue; the thread's error raised here, in the caller."""
        thread, _, out = self._worker
        while True:
            try:
                item = out.get(timeout=_POLL)
            except queue.Empty:
                if thread.is_alive():
                    continue
                try:  # it may have put its last item as it ended
                    item = out.get_nowait()
                except queue.Empty:
                    raise RuntimeError("the data thread ended before the run's last batch") from None
            if isinstance(item, _Failed):
                self.close()
                raise item.error
            return item

    def close(self) -> None:
        """Stops the thread and lets go of what it drew. Waits for it to finish the
        chunk it is drawing (a fraction of a second), so no thread outlives the run; a
        chunk stuck for ``CLOSE_WAIT`` seconds (a file system that hangs) is left to the
        daemon thread, which ends with the process."""
        if self._worker is None:
            return
        thread, stop, out = self._worker
        self._worker, self._next = None, None
        stop.set()
        deadline = time.monotonic() + CLOSE_WAIT
        while thread.is_alive() and time.monotonic() < deadline:
            _drain(out)
            thread.join(timeout=_POLL)
        _drain(out)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Puts ``item`` when there is room; False if ``stop`` was set first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _drain(out: queue.Queue) -> None:
    while True:
        try:
            out.get_nowait()
        except queue.Empty:
            return
