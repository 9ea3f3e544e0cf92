"""Sync work in the manager's own threads, holding its slots until the thread returns.

A thread cannot be interrupted. When the caller stops waiting (a timeout, a cancel at
shutdown) the function keeps running; what matters is that it keeps counting: its
thread stays busy in the pool (``max_threads``) and its ``limiter`` token is only
given back when the function returns, so a retry or other work can never overlap
it beyond the limits the user set.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import anyio

from ._task import Event


class _Loop(Protocol):
    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None: ...
    def new_event(self) -> Event: ...


class ThreadJob:
    """One call in a pool thread, as seen from the event loop."""

    __slots__ = ("_limiter", "_loop", "finished", "ran", "started")

    def __init__(self, loop: _Loop, limiter: anyio.CapacityLimiter | None) -> None:
        self._loop = loop
        self._limiter = limiter
        self.started = loop.new_event()
        self.finished = loop.new_event()
        self.ran = False

    def run(self, context: contextvars.Context, func: Callable[[], Any]) -> Any:
        self.ran = True
        self._loop.call_soon_threadsafe(self.started.set)
        return context.run(func)

    def done(self, future: Future[Any]) -> None:
        # Called in the pool thread, or on the loop when a queued call is cancelled.
        with contextlib.suppress(RuntimeError):  # the loop is gone: a thread outlived the app
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if self._limiter is not None:
            self._limiter.release_on_behalf_of(self)
        self.started.set()
        self.finished.set()

    @property
    def abandoned(self) -> bool:
        """The function is running in its thread, but nobody waits for it any more."""
        return self.ran and not self.finished.is_set()

    async def call(
        self, pool: ThreadPoolExecutor, func: Callable[[], Any], time_limit: float | None
    ) -> Any:
        """Run ``func`` in ``pool``; ``time_limit`` counts from the moment a thread took it.

        A call still queued for a thread when the caller gives up never runs. One
        already running goes on: ``finished`` tells when its thread is free again.
        """
        limiter = self._limiter
        if limiter is not None:
            await limiter.acquire_on_behalf_of(self)
        # The pool outlives every task of its manager, so submit() cannot refuse here.
        future = pool.submit(self.run, contextvars.copy_context(), func)
        future.add_done_callback(self.done)
        try:
            await self.started.wait()
            with anyio.fail_after(time_limit):
                await self.finished.wait()
        except BaseException:
            future.cancel()  # only succeeds while it is still queued
            raise
        return future.result()
