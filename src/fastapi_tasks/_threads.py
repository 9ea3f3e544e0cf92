"""Sync work in the manager's own threads, holding its slots until the thread returns.

A thread cannot be interrupted. When the caller stops waiting (a timeout, a cancel at
shutdown) the function keeps running; what matters is that it keeps counting: its
thread stays busy in the pool (``max_threads``) and its ``limiter`` token is only
given back when the function returns, so a retry or other work can never overlap
it beyond the limits the user set. The threads are daemon threads: one still stuck
in abandoned work never keeps the process from exiting.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, cast

import anyio

from ._task import Event, Work

__all__ = ["ThreadJob", "WorkerThreads"]

_Item = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


class WorkerThreads:
    """At most ``max_threads`` daemon threads, started on demand and kept until ``close()``."""

    def __init__(self, max_threads: int, name: str) -> None:
        self._max = max_threads
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._count = 0
        self._lock = threading.Lock()

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, func, args))
        if not self._idle.acquire(timeout=0):
            with self._lock:
                if self._count < self._max:
                    self._count += 1
                    thread = threading.Thread(
                        target=self._work, name=f"{self._name}-{self._count}", daemon=True
                    )
                    thread.start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, func, args = item
            del item
            failure: BaseException | None = None
            result: Any = None
            ran = future.set_running_or_notify_cancel()
            if ran:
                try:
                    result = func(*args)
                except BaseException as exc:  # SystemExit too: it belongs to the work
                    failure = exc
            # Let go of the call before the loop learns it is done: the loop may go on
            # (and find the work finished) before this thread runs another line.
            del func, args
            if ran:
                if failure is None:
                    future.set_result(result)
                else:
                    future.set_exception(failure)
            del future, failure, result
            self._idle.release()

    def close(self) -> None:
        """Drop queued calls (their futures are cancelled); idle threads end, busy ones finish."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            future, _, _ = cast("_Item", item)  # the None that stops a thread comes later
            future.cancel()
        with self._lock:
            for _ in range(self._count):
                self._queue.put(None)


class _Loop(Protocol):
    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None: ...
    def new_event(self) -> Event: ...


class ThreadJob:
    """One call in a pool thread, as seen from the event loop."""

    __slots__ = (
        "_caller_left",
        "_holding",
        "_limiter",
        "_loop",
        "_work",
        "finished",
        "ran",
        "started",
    )

    def __init__(self, loop: _Loop, limiter: anyio.CapacityLimiter | None, work: Work) -> None:
        self._loop = loop
        self._limiter = limiter
        # Told what the call waits for (Task.waiting_for); let go once the caller left,
        # so a thread that is slow to drop this job never keeps the work alive.
        self._work: Work | None = work
        self._holding = False
        self._caller_left = False
        self.started = loop.new_event()
        self.finished = loop.new_event()
        self.ran = False

    def _run(self, context: contextvars.Context, func: Callable[[], Any]) -> Any:
        self._loop.call_soon_threadsafe(self.started.set)
        return context.run(func)

    def _thread_done(self, future: Future[Any]) -> None:
        # Called in the pool thread, or on the loop when a queued call is cancelled.
        with contextlib.suppress(RuntimeError):  # the loop is gone: a thread outlived the app
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        self.started.set()
        self.finished.set()
        if self._caller_left:
            self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._limiter.release_on_behalf_of(self)  # type: ignore[union-attr]

    @property
    def abandoned(self) -> bool:
        """The function is running in its thread, but nobody waits for it any more."""
        return self.ran and not self.finished.is_set()

    async def call(
        self,
        threads: WorkerThreads,
        context: contextvars.Context,
        func: Callable[[], Any],
        time_limit: float | None,
    ) -> Any:
        """Run ``func`` in ``context`` in a thread; ``time_limit`` counts once a thread took it.

        When ``func`` returns an awaitable (a plain function wrapping a coroutine
        function), it is awaited here, under the same time limit and still holding
        the limiter: the options apply to the whole of the work. A call still queued
        for a thread when the caller gives up never runs. One already running goes
        on: ``finished`` tells when its thread is free again.
        """
        limiter = self._limiter
        work = cast("Work", self._work)
        future: Future[Any] | None = None
        try:
            if limiter is not None:
                work.blocked = "limiter"
                await limiter.acquire_on_behalf_of(self)
                self._holding = True
            work.blocked = "thread"
            future = threads.submit(self._run, context, func)
            future.add_done_callback(self._thread_done)
            self.ran = True  # until it turns out the call never left the queue
            try:
                await self.started.wait()
                work.blocked = None
                deadline = math.inf if time_limit is None else anyio.current_time() + time_limit
                with anyio.CancelScope(deadline=deadline):
                    await self.finished.wait()
                    result = future.result()
                    if inspect.isawaitable(result):
                        result = await result
                    return result
                raise TimeoutError
            except BaseException:
                if future.cancel():  # only succeeds while it is still queued
                    self.ran = False
                raise
        finally:
            work.blocked = None
            self._work = None
            self._caller_left = True
            # A thread still running keeps the token until it returns (_settle).
            if future is None or not self.ran or self.finished.is_set():
                self._release()
