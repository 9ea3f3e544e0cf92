"""Helpers for testing apps that use fastapi_tasks.

``TestClient`` used as a context manager runs the app's lifespan for sync tests. For
async tests, ``run_lifespan(app)`` does the same: it talks to the app through the
ASGI lifespan messages, in a task of its own, exactly as a server does, so the task
manager starts before the app's startup code and drains before its shutdown code.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.types import ASGIApp, Message

__all__ = ["run_lifespan"]


@asynccontextmanager
async def run_lifespan(app: ASGIApp) -> AsyncGenerator[dict[str, Any], None]:
    """Run ``app``'s lifespan for the duration of the block, the way a server does.

    Yields the lifespan state (what the app's lifespan yielded, which requests
    see as ``request.state``). Pass the same dict as the ``state`` of requests you
    build by hand; ``httpx``'s ``ASGITransport`` does not send one.

    Raises:
        RuntimeError: The app's startup or shutdown failed; the message is the app's.
    """
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](1)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](1)

    raised: list[Exception] = []

    async def serve_lifespan() -> None:
        async with app_outbox:
            try:
                await app(scope, app_inbox.receive, app_outbox.send)
            except Exception as exc:  # reported below, as the failure of the step it broke
                raised.append(exc)

    async def expect(kind: str) -> None:
        try:
            message = await from_app.receive()
        except anyio.EndOfStream:
            message = {"type": f"{kind}.failed"}
        if message["type"] != f"{kind}.complete":
            cause = raised[0] if raised else None
            detail = message.get("message") or (repr(cause) if cause else "it ended early")
            raise RuntimeError(f"the app's {kind} failed: {detail}") from cause

    try:
        async with anyio.create_task_group() as group, to_app, from_app, app_inbox:
            group.start_soon(serve_lifespan)
            await to_app.send({"type": "lifespan.startup"})
            await expect("lifespan.startup")
            try:
                yield state
            finally:
                with anyio.CancelScope(shield=True):
                    await to_app.send({"type": "lifespan.shutdown"})
                    await expect("lifespan.shutdown")
    except BaseException as exc:
        # The task group wraps what the block raised in an exception group: give the
        # caller its own exception back (an assertion, a pytest.raises target).
        inner: tuple[BaseException, ...] = getattr(exc, "exceptions", (exc,))
        raise (inner[0] if len(inner) == 1 else exc) from None
