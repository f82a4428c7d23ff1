"""The demo's jobs on the main thread, with the web server on a thread of its own.

torch's CPU operations run slower on a thread that is not the main one: a one-face photo takes
0.33 s there against 0.205 s on the main thread (``bench/demo_latency.py``), because OpenMP wakes its
worker threads for every small operation instead of finding them spinning. So ``lrpo demo`` runs
uvicorn on a thread and the main thread runs the jobs that :class:`~lrpo.demo.safety.JobGate` admits,
one at a time, as they are handed over.
"""

from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import Callable, TypeVar

T = TypeVar("T")


class MainThreadJobs:
    """A hand-over queue: :meth:`execute` (any thread) waits for the main thread's :meth:`serve_until`."""

    def __init__(self, poll_s: float = 0.1):
        self.poll_s = poll_s
        self._queue: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()

    def execute(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread in :meth:`serve_until` and return its result (or raise its error)."""
        done: Future = Future()
        self._queue.put((fn, done))
        return done.result()

    def serve_until(self, finished: Callable[[], bool]) -> None:
        """Run handed-over jobs until ``finished()`` is true (checked every ``poll_s`` seconds)."""
        while not finished():
            try:
                fn, done = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn())
            except Exception as e:  # noqa: BLE001  (the job's error goes back to the request that sent it)
                done.set_exception(e)
            except BaseException as e:  # Ctrl-C inside a job: the request fails and the demo stops
                done.set_exception(e)
                raise
