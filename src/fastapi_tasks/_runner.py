"""Starting work on the event loop, and the one boundary between threads and the loop.

On asyncio every task is a plain ``asyncio.Task``: that is what makes ``schedule()``
cost about as much as ``loop.create_task``. On trio (or any other anyio backend) the
work runs in a task group owned by the app's lifespan, each task inside its own
cancel scope so it can be cancelled alone and shielded at shutdown.

``on_loop_thread()`` is the only place that decides whether a caller may touch the
manager's state directly: on the loop's own thread yes, from a plain thread the call
is handed to the loop, and from a different event loop it is refused with both loops
named (waiting there would hang: the work could never run).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc

from ._task import Event, Work
from .errors import FastAPITasksWrongLoopError

__all__ = ["Chain", "Runner", "open_runner"]

T = TypeVar("T")


class Runner(Protocol):
    cancelled_exc: type[BaseException]
    ordered: bool
    """Whether start order needs a chain (trio); asyncio starts tasks in FIFO order."""

    def on_loop_thread(self) -> bool: ...
    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None: ...
    def start(self, work: Work, coro: Coroutine[Any, Any, None], chain: Chain | None) -> None: ...
    def new_event(self) -> Event: ...
    def run_blocking(self, func: Callable[[], Coroutine[Any, Any, T]]) -> T: ...
    def describe(self) -> str: ...


def _loop_of_this_thread() -> str | None:
    """Describe the event loop running in the calling thread, if any."""
    try:
        return repr(asyncio.get_running_loop())
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_run():
        return f"trio run in thread {threading.current_thread().name!r}"
    return None


def _refuse(runner: Runner, here: str) -> FastAPITasksWrongLoopError:
    return FastAPITasksWrongLoopError(
        f"called from {here}, but this app's lifespan, and so its background work, runs on "
        f"{runner.describe()}. Run the lifespan and the requests on the same event loop "
        "(in tests: the same fixture scope, or anyio's pytest plugin)"
    )


class AsyncioRunner:
    """Runs each task as a bare ``asyncio.Task`` on the loop that served the lifespan."""

    cancelled_exc: type[BaseException] = asyncio.CancelledError
    ordered = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()

    def describe(self) -> str:
        return repr(self._loop)

    def on_loop_thread(self) -> bool:
        if threading.get_ident() == self._thread:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:  # the loop's thread while the loop does not run:
                return False  # hand the call over, it runs once the loop runs again
            if running is self._loop:
                return True
            raise _refuse(self, repr(running))
        here = _loop_of_this_thread()
        if here is not None:
            raise _refuse(self, here)
        return False

    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None:
        self._loop.call_soon_threadsafe(func, *args)

    def start(self, work: Work, coro: Coroutine[Any, Any, None], chain: Chain | None) -> None:
        context = work.context
        if context is None:
            work.cancel_target = self._loop.create_task(coro)
        elif sys.version_info >= (3, 11):
            # create_task(context=): one C call instead of two, and no extra copy.
            work.cancel_target = self._loop.create_task(coro, context=context)
        else:  # pragma: no cover - Python 3.10 (the suite runs there too, without coverage)
            work.cancel_target = context.run(self._loop.create_task, coro)

    def new_event(self) -> Event:
        return asyncio.Event()

    def run_blocking(self, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(func(), self._loop).result()


class _Link:
    """One task's place in a chain: done once it started, or was skipped (cancelled)."""

    __slots__ = ("done", "event", "prev", "skipped")

    def __init__(self, prev: _Link | None) -> None:
        self.prev = prev
        self.done = False
        self.skipped = False
        self.event: Any = None

    def finish(self, skipped: bool) -> None:
        self.done = True
        self.skipped = skipped
        if not skipped:
            self.prev = None  # nobody behind it needs what came before
        if self.event is not None:
            self.event.set()


class Chain:
    """The start order of one batch of work (a request's, or the manager's own) on trio.

    trio deliberately runs newly spawned tasks in a varying order. A task waits only
    for the one scheduled just before it in the same batch, so batches never wait for
    each other (a process-wide turnstile made immediate work wait seconds under load).
    """

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail: _Link | None = None

    def link(self) -> _Link:
        link = self.tail = _Link(self.tail)
        return link


class AnyioRunner:
    """Runs each task in the lifespan's task group, in a cancel scope of its own."""

    ordered = True

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        import trio  # the only non-asyncio backend anyio 4 ships

        self._group = group
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self.cancelled_exc = anyio.get_cancelled_exc_class()
        self._event = trio.Event
        self._from_thread_run = trio.from_thread.run

    def describe(self) -> str:
        return f"a trio run in thread {self._thread}"

    def on_loop_thread(self) -> bool:
        if threading.get_ident() == self._thread:
            return True
        here = _loop_of_this_thread()
        if here is not None:
            raise _refuse(self, here)
        return False

    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None:
        self._token.run_sync_soon(func, *args)

    def start(self, work: Work, coro: Coroutine[Any, Any, None], chain: Chain | None) -> None:
        assert chain is not None, "work on trio always comes with its batch's chain"
        link = chain.link()
        context = work.context
        if context is None:
            self._group.start_soon(self._run, work, coro, link)
        else:
            context.run(self._group.start_soon, self._run, work, coro, link)

    async def _run(self, work: Work, coro: Coroutine[Any, Any, None], link: _Link) -> None:
        with anyio.CancelScope(shield=work.config.shielded) as scope:
            work.cancel_target = scope
            try:
                await self._wait_turn(link)
            except BaseException:
                link.finish(skipped=True)
                coro.close()
                raise
            link.finish(skipped=False)
            await coro

    async def _wait_turn(self, link: _Link) -> None:
        ahead = link.prev
        while ahead is not None:
            if not ahead.done:
                if ahead.event is None:
                    ahead.event = self._event()
                await ahead.event.wait()
            # One that was skipped never started: wait for the one before it instead.
            ahead = ahead.prev if ahead.skipped else None
        link.prev = None

    def new_event(self) -> Event:
        return self._event()

    def run_blocking(self, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return self._from_thread_run(func, trio_token=self._token)


@asynccontextmanager
async def open_runner() -> AsyncGenerator[Runner, None]:
    """Create the runner for the event loop the caller runs on."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        yield AsyncioRunner(loop)
        return
    async with anyio.create_task_group() as group:
        yield AnyioRunner(group)
