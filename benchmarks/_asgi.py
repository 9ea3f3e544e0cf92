"""Calling apps as an ASGI server would, without sockets: a prepared scope, receive and send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import Message

from ._apps import finished

__all__ = ["Client", "running"]

_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}
_DISCONNECT: Message = {"type": "http.disconnect"}
_HEADERS = [(b"host", b"bench.local"), (b"user-agent", b"bench"), (b"accept", b"*/*")]


class _Exchange:
    """One request's receive and send."""

    __slots__ = ("received", "status")

    def __init__(self) -> None:
        self.received = False
        self.status = 0

    async def receive(self) -> Message:
        if self.received:
            return _DISCONNECT
        self.received = True
        return _REQUEST

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


class Client:
    """Sends ``GET /`` to apps whose lifespans run, and waits until each request's work ran."""

    def __init__(
        self,
        apps: Mapping[str, tuple[FastAPI, int]],
        states: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self._apps = {name: app for name, (app, _) in apps.items()}
        self._work = {name: work for name, (_, work) in apps.items()}
        self._states = states
        self.expected = 0
        """Pieces of work sent so far; :data:`finished` reaches it once they all ran."""

    def scope(self, name: str, path: str = "/") -> dict[str, Any]:
        """A fresh HTTP scope for ``GET path`` on app ``name``."""
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": _HEADERS,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": dict(self._states[name]),  # servers give each request a shallow copy
        }

    def app(self, name: str) -> FastAPI:
        return self._apps[name]

    async def call(self, name: str) -> int:
        """Send one request to app ``name``; return the response status."""
        exchange = _Exchange()
        await self._apps[name](self.scope(name), exchange.receive, exchange.send)
        return exchange.status

    async def request(self, name: str) -> int:
        """Send one request, wait until the work it scheduled ran; return the status."""
        status = await self.call(name)
        self.expected += self._work[name]
        await finished.reach(self.expected)
        return status


@asynccontextmanager
async def asgi_lifespan(app: Any) -> AsyncGenerator[dict[str, Any], None]:
    """Run ``app``'s lifespan through ASGI messages, in a task of its own, as servers do.

    (The library wires its manager into the ASGI lifespan itself, so entering
    ``app.router.lifespan_context`` directly would not start it.)
    """
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    serving = asyncio.create_task(app(scope, inbox.get, outbox.put))

    async def step(kind: str) -> None:
        await inbox.put({"type": kind})
        reply = asyncio.create_task(outbox.get())
        await asyncio.wait({reply, serving}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            await serving  # raises what went wrong
        if reply.result()["type"] != f"{kind}.complete":
            raise RuntimeError(f"{kind} failed: {reply.result()}")

    await step("lifespan.startup")
    try:
        yield state
    finally:
        await step("lifespan.shutdown")
        await serving


@asynccontextmanager
async def running(
    apps: Mapping[str, tuple[FastAPI, int]], *, check: bool = True
) -> AsyncGenerator[Client, None]:
    """Run the lifespans of ``apps`` (name: app and pieces of work per request); yield a client.

    The lifespans run in a task of their own, as under a server: a task group one of
    them opens must not enclose the requests. With ``check``, first send each app one
    request and make sure it answers 200.
    """
    states: dict[str, Mapping[str, Any]] = {}
    ready = asyncio.Event()
    stop = asyncio.Event()

    async def host() -> None:
        async with AsyncExitStack() as stack:
            for name, (app, _) in apps.items():
                states[name] = await stack.enter_async_context(asgi_lifespan(app))
            ready.set()
            await stop.wait()

    lifespans = asyncio.create_task(host())
    started = asyncio.create_task(ready.wait())
    await asyncio.wait({lifespans, started}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        started.cancel()
        await lifespans  # raises what went wrong
        raise RuntimeError("the lifespans ended before they started")
    try:
        client = Client(apps, states)
        for name in apps if check else ():
            status = await client.request(name)
            if status != 200:
                raise RuntimeError(f"{name}: GET / answered {status}")
        yield client
    finally:
        stop.set()
        await lifespans
