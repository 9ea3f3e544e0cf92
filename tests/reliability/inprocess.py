"""Driving an ASGI app in process, without sockets: its lifespan and its requests.

Only the ASGI protocol is used, as a server would use it: the lifespan runs through
``lifespan.startup``/``lifespan.shutdown`` messages, and every request gets a copy of the
lifespan state. So these helpers keep working whatever the library hooks into.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Scope

LIFESPAN_SECONDS = 30.0


@asynccontextmanager
async def lifespan(
    app: ASGIApp, seconds: float = LIFESPAN_SECONDS
) -> AsyncGenerator[dict[str, Any], None]:
    """Run the app's lifespan around the block; yield the lifespan state."""
    state: dict[str, Any] = {}
    to_app, app_receives = anyio.create_memory_object_stream[Message](2)
    app_sends, from_app = anyio.create_memory_object_stream[Message](2)
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
    scope["state"] = state

    async def receive() -> Message:
        return await app_receives.receive()

    async def send(message: Message) -> None:
        await app_sends.send(message)

    async def run() -> None:
        await app(scope, receive, send)

    async with anyio.create_task_group() as group, to_app, app_receives, app_sends, from_app:
        group.start_soon(run)
        await to_app.send({"type": "lifespan.startup"})
        with anyio.fail_after(seconds):
            message = await from_app.receive()
        assert message["type"] == "lifespan.startup.complete", message
        try:
            yield state
        finally:
            await to_app.send({"type": "lifespan.shutdown"})
            with anyio.fail_after(seconds):
                message = await from_app.receive()
            assert message["type"] == "lifespan.shutdown.complete", message


class BrokenPipe(OSError):
    """What a send to a client that went away raises."""


async def request(
    app: ASGIApp, state: dict[str, Any], path: str, *, break_at_end: bool = False
) -> int | None:
    """One GET request; the response status (``None`` if the response never started).

    ``break_at_end``: the final body message fails to send, like a client that left in
    the middle of the response. An exception from the app propagates.
    """
    status: int | None = None
    done = anyio.Event()
    requested = False
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": dict(state),
    }

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()
            if break_at_end:
                raise BrokenPipe("the client is gone")

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return status
