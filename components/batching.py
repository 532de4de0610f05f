"""Cross-request batching for the model server: one decoding thread, requests grouped into batches.

Requests (`Job`s: prompts as token ids, a DecodeConfig, a deadline) wait in one bounded queue. The
decoding thread takes the oldest, then gathers later ones that can share its batch, up to
`max_batch_prompts` prompts, while they keep coming (at most `batch_wait_s` after the last one joined),
and decodes them all with one `model.generate` call. Sharing
is exact: the batched decoder gives every prompt of a batch the tokens and forwards it gets alone, so
requests batch together when their DecodeConfig is equal and greedy (temperature 0). A sampled request
decodes alone, since the rows of one batch draw from one random generator and a batch would change
what a seed gives.

Deadlines and cancellation stay per request: before every forward the decoder asks each row whether it
should stop (its request's deadline passed, its client went away, the server is stopping, or the
request said so for that row, e.g. a stop string), and drops only those rows; the others decode on
unchanged. Memory is bounded by one batch of at most `max_batch_prompts` prompts (a single request may
hold more, up to the server's prompt limit, and then decodes alone).

The thread runs while there are jobs and ends when the queue is empty, so an idle server (and a test
that made a few requests) holds no thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from model.decoding import DecodeConfig, GenerationResult


class QueueFull(Exception):
    """The queue holds `max_waiting` requests already (the server answers 503)."""


class ShuttingDown(Exception):
    """The server is stopping: no new request is taken (503)."""


class Expired(Exception):
    """The request's deadline passed before its batch started (504)."""


@dataclass(eq=False)
class Job:
    """One request's prompts and settings, and what became of them."""

    ids: list[list[int]]
    cfg: DecodeConfig
    deadline: float  # time.monotonic()
    on_block: Callable[[int, list[int], bool], None] | None = None  # (row, finished tokens, done), see generate
    row_done: Callable[[int], bool] | None = None  # True: the request needs no more of that row
    cancel: threading.Event = field(default_factory=threading.Event)  # the client went away
    on_finish: Callable[[], None] | None = None  # called (on the decoding thread) once result or error is set
    result: GenerationResult | None = None
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def end(self) -> None:
        self.finished.set()
        if self.on_finish is not None:
            self.on_finish()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def stops(self, row: int, stopping: threading.Event) -> bool:
        return (self.cancel.is_set() or stopping.is_set() or self.expired()
                or (self.row_done is not None and self.row_done(row)))


def can_share(a: DecodeConfig, b: DecodeConfig) -> bool:
    """Whether two requests' prompts decode in one batch exactly as they would apart."""
    return a == b and a.temperature == 0 and a.max_batch_size is None


class Batcher:
    """The queue and the decoding thread; `generate(ids, cfg, on_block=, cancelled=)` decodes a batch."""

    def __init__(self, generate: Callable[..., GenerationResult], max_batch_prompts: int, batch_wait_s: float,
                 max_waiting: int, stopping: threading.Event) -> None:
        self.generate = generate
        self.max_batch_prompts, self.batch_wait_s, self.max_waiting = max_batch_prompts, batch_wait_s, max_waiting
        self.stopping = stopping
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False  # a batch is being gathered or decoded
        self.batches: list[int] = []  # prompts of each batch decoded (the last few hundred), for tests and logs

    # ---------------------------------------------------------------- the requests' side
    def submit(self, job: Job) -> Job:
        """Queue `job`; QueueFull or ShuttingDown when it cannot be taken."""
        with self._cond:
            if self.stopping.is_set():
                raise ShuttingDown()
            # up to max_waiting requests wait behind the batch in progress (one more when none is)
            if len(self._queue) >= self.max_waiting + (0 if self._busy else 1):
                raise QueueFull()
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="draftedit-decode", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return job

    def wait(self, job: Job) -> GenerationResult:
        """Block until `job` is decoded (or stopped); its error, if any, is raised here."""
        job.finished.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def idle(self) -> bool:
        """No job queued or decoding (and so no thread)."""
        with self._cond:
            return self._thread is None

    # ---------------------------------------------------------------- the decoding thread
    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread, self._busy = None, False
                    return
                self._busy = True
                batch = self._gather()
            if batch:
                self._decode(batch)
            with self._cond:
                self._busy = False

    def _gather(self) -> list[Job]:
        """(Holding the lock) the oldest live job and the queued ones that can share its batch, waiting up to
        batch_wait_s for more while the batch has room."""
        first = self._pop_live()
        if first is None:
            return []
        batch, rows = [first], len(first.ids)
        if not can_share(first.cfg, first.cfg):
            return batch
        until = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch_prompts:
            for job in list(self._queue):
                if rows + len(job.ids) <= self.max_batch_prompts and can_share(first.cfg, job.cfg):
                    self._queue.remove(job)
                    if self._refuse_expired(job):
                        continue
                    batch.append(job)
                    rows += len(job.ids)
                    # a request joined: wait as long again, since concurrent clients' requests arrive spread
                    # out (the wait stays bounded: each join fills the batch)
                    until = time.monotonic() + self.batch_wait_s
            left = until - time.monotonic()
            if rows >= self.max_batch_prompts or left <= 0 or self.stopping.is_set():
                break
            self._cond.wait(timeout=left)
        return batch

    def _pop_live(self) -> Job | None:
        while self._queue:
            job = self._queue.popleft()
            if not self._refuse_expired(job):
                return job
        return None

    def _refuse_expired(self, job: Job) -> bool:
        """Finish a job that may not start any more (deadline passed, client gone, server stopping)."""
        if self.stopping.is_set():
            job.error = ShuttingDown()
        elif job.cancel.is_set() or job.expired():
            job.error = Expired()
        else:
            return False
        job.end()
        return True

    def _decode(self, batch: list[Job]) -> None:
        owner: list[tuple[Job, int]] = [(job, i) for job in batch for i in range(len(job.ids))]
        starts, ids = [], []
        for job in batch:
            starts.append(len(ids))
            ids.extend(job.ids)

        def on_block(row: int, tokens: list[int], done: bool) -> None:
            job, i = owner[row]
            if job.on_block is not None:
                job.on_block(i, tokens, done)

        def cancelled(row: int) -> bool:
            job, i = owner[row]
            return job.stops(i, self.stopping)

        try:
            result = self.generate(ids, batch[0].cfg, on_block=on_block, cancelled=cancelled)
        except BaseException as exc:  # noqa: BLE001 - every waiting request must hear of it
            for job in batch:
                job.error = exc
                job.end()
            return
        self.batches = [*self.batches[-255:], len(ids)]
        for job, start in zip(batch, starts):
            job.result = _rows(result, start, len(job.ids))
            job.end()


def _rows(result: GenerationResult, start: int, count: int) -> GenerationResult:
    """The part of a batch's result that belongs to one request."""
    part = slice(start, start + count)
    return GenerationResult(
        sequences=result.sequences[part], forwards=result.forwards[part], edits=result.edits[part],
        commits=result.commits[part], canvases=result.canvases[part], forward_calls=result.forward_calls,
        wall_seconds=result.wall_seconds, trajectories=None, stopped=result.stopped[part])
