"""Starting work on the event loop: a bare asyncio fast path, and anyio for everything else.

On asyncio every task is a plain ``asyncio.Task``: that is what makes ``schedule()``
cost about as much as ``loop.create_task``. On trio (or any other anyio backend) the
work runs in a task group owned by the app's lifespan, each task inside its own
cancel scope so it can be cancelled alone and shielded at shutdown.
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

from ._task import Event, Task

T = TypeVar("T")


class Runner(Protocol):
    cancelled_exc: type[BaseException]
    thread: int

    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None: ...
    def start(self, task: Task[Any]) -> None: ...
    def new_event(self) -> Event: ...
    def run_blocking(self, func: Callable[[], Coroutine[Any, Any, T]]) -> T: ...


class AsyncioRunner:
    """Runs each task as a bare ``asyncio.Task`` on the loop that served the lifespan."""

    cancelled_exc: type[BaseException] = asyncio.CancelledError

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.thread = threading.get_ident()

    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None:
        self._loop.call_soon_threadsafe(func, *args)

    def start(self, task: Task[Any]) -> None:
        context = task._context
        if context is None:
            task._handle = self._loop.create_task(task._run())
        elif sys.version_info >= (3, 11):
            # create_task(context=): one C call instead of two, and no extra copy.
            task._handle = self._loop.create_task(task._run(), context=context)
        else:  # pragma: no cover - Python 3.10 (the suite runs there too, without coverage)
            task._handle = context.run(self._loop.create_task, task._run())

    def new_event(self) -> Event:
        return asyncio.Event()

    def run_blocking(self, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(func(), self._loop).result()


class AnyioRunner:
    """Runs each task in the lifespan's task group, in a cancel scope of its own.

    trio deliberately runs newly spawned tasks in a random order. To keep the
    promise that work starts in the order it was handed over, each task takes a
    ticket; one that wakes up before its turn waits for the task ahead of it.
    """

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        import trio  # the only non-asyncio backend anyio 4 ships

        self._group = group
        self._token = trio.lowlevel.current_trio_token()
        self.thread = threading.get_ident()
        self.cancelled_exc = anyio.get_cancelled_exc_class()
        self._event = trio.Event
        self._from_thread_run = trio.from_thread.run
        self._tickets = 0
        self._turn = 0
        self._waiting: dict[int, Event] = {}

    def call_soon_threadsafe(self, func: Callable[..., object], *args: Any) -> None:
        self._token.run_sync_soon(func, *args)

    def start(self, task: Task[Any]) -> None:
        ticket = self._tickets
        self._tickets += 1
        context = task._context
        if context is None:
            self._group.start_soon(self._run, task, ticket)
        else:
            context.run(self._group.start_soon, self._run, task, ticket)

    async def _run(self, task: Task[Any], ticket: int) -> None:
        with anyio.CancelScope(shield=task.config.shielded) as scope:
            task._handle = scope
            try:
                if ticket != self._turn:
                    event = self._waiting[ticket] = self._event()
                    await event.wait()
            finally:
                self._turn += 1
                follower = self._waiting.pop(self._turn, None)
                if follower is not None:
                    follower.set()
            await task._run()

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
