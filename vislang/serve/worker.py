"""ModelWorker: the one thread that runs the model and the index for the service.

One thread, because a forward pass of the encoder already spreads over every core, so two run
at once only share the cores and both finish later; and because faiss's thread count for a
single query is a process-wide setting (search/device.py), which concurrent searches would race
on. Requests queue here instead, and the thread works in rounds: it takes in whatever is queued,
searches every waiting text query, grouped by the options they share (k, kind, re-ranking), each
group as one `Index.search` call (one forward pass of the text tower and one faiss call, at most
`max_batch` queries), then runs one other unit of work, the oldest: a group of photo searches
(likewise) or a call (a caption, a goes-with, a "more like this"). A text query, cheap, then
waits behind at most one costly unit, and the costly work still moves on every round.
Nothing waits for a batch to fill: alone, a request runs at once; batches form while the thread is
busy, under load. Measured against one search per thread-pool thread and against one search at a
time: docs/BENCHMARKS.md, "Serve".
"""
from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from ..search import Hit, Index

DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class SearchOptions:
    """The keyword arguments of `Index.search` that queries must share to be searched together."""

    k: int
    kind: str | None = None
    rerank: int | None = None
    reranker: bool = False
    text_weight: float | None = None  # None: the index's default


@dataclass
class _Job:
    future: Future
    work: Callable[[], Any] | None = None  # anything but a search: run on its own
    text: str | None = None
    image: Image.Image | None = None
    options: SearchOptions | None = None

    def batch_key(self) -> tuple:
        return self.options, self.text is not None, self.image is not None


class ModelWorker:
    def __init__(self, index: Index, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.index, self.max_batch = index, max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.batch_sizes: Counter[int] = Counter()  # search batches run, by size: how much batching happened

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vislang-model", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def search(self, text: str | None, image: Image.Image | None, options: SearchOptions) -> Future[list[Hit]]:
        """One query (a text, a photo, or both): its hits, best first, once searched."""
        return self._put(_Job(Future(), text=text, image=image, options=options))

    def call(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """`work(*args, **kwargs)` on the worker's thread, e.g. a caption or a goes-with."""
        return self._put(_Job(Future(), work=lambda: work(*args, **kwargs)))

    def _put(self, job: _Job) -> Future:
        if self._thread is None:
            raise RuntimeError("the model worker is not running (ModelWorker.start)")
        self._jobs.put(job)
        return job.future

    def _run(self) -> None:
        """Rounds: take in what is queued; search every waiting text (grouped by options, at most
        `max_batch` a batch); then run one other unit, the oldest: a group of photo searches (at
        most `max_batch`) or one call. A text then waits for at most one such unit, and each round
        moves the other work on, however many texts keep coming."""
        pending: list[_Job] = []
        stopping = False
        while not (stopping and not pending):
            stopping = self._take(pending, wait=not pending) or stopping
            texts = [job for job in pending if job.work is None and job.image is None]
            for group in _groups(texts).values():
                for start in range(0, len(group), self.max_batch):
                    self._run_search(group[start : start + self.max_batch])
            others = [job for job in pending if job.work is not None or job.image is not None]
            if others:
                first = others[0]
                if first.work:
                    unit = [first]
                    if first.future.set_running_or_notify_cancel():
                        _settle(first.future, first.work)
                else:
                    unit = [job for job in others if not job.work and job.batch_key() == first.batch_key()][: self.max_batch]
                    self._run_search(unit)
                others = [job for job in others if all(job is not done for done in unit)]
            pending = others

    def _take(self, pending: list[_Job], wait: bool) -> bool:
        """Move the queued jobs to `pending` (waiting for one when `wait`); True once told to stop."""
        while True:
            try:
                job = self._jobs.get() if wait else self._jobs.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            pending.append(job)
            wait = False

    def _run_search(self, group: list[_Job]) -> None:
        # a search whose future was cancelled (its request abandoned) is not run
        live = [job for job in group if job.future.set_running_or_notify_cancel()]
        if live:
            self._search(live)

    def _search(self, group: list[_Job]) -> None:
        first = group[0]
        options = {name: value for name, value in asdict(first.options).items() if value is not None}
        texts = [job.text for job in group] if first.text is not None else None
        images = [job.image for job in group] if first.image is not None else None
        try:
            results = self.index.search(texts=texts, images=images, **options)
        except Exception as err:  # noqa: BLE001 - handed to the request that caused it
            if len(group) == 1:
                first.future.set_exception(err)
            else:  # one bad query must not fail the others: run each alone to find whose it is
                for job in group:
                    self._search([job])
            return
        self.batch_sizes[len(group)] += 1
        for job, hits in zip(group, results):
            job.future.set_result(hits)


def _groups(jobs: list[_Job]) -> dict[tuple, list[_Job]]:
    """Searches by what they must share to be searched together, in order of their first arrival."""
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.batch_key(), []).append(job)
    return groups


def _settle(future: Future, work: Callable[[], Any]) -> None:
    try:
        future.set_result(work())
    except Exception as err:  # noqa: BLE001 - handed to the request that asked for the work
        future.set_exception(err)
