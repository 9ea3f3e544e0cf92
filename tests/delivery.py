"""ASGI parts shared by the "when is a response delivered?" tests.

``tests/test_e2e.py`` (uvicorn, hypercorn) and ``tests/granian_app.py`` (granian, in its
own process) both use them: a response whose final body message carries data, and a
timeout middleware whose clock starts at that final message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BIG_CHUNK_SIZE = 64 * 1024 * 1024
"""Bytes no loopback socket buffers hold: a client that does not read stops the server."""


def is_final(message: Message) -> bool:
    """Whether ``message`` is the last one of an HTTP response."""
    return message["type"] == "http.response.body" and not message.get("more_body", False)


class FinalChunkResponse(StreamingResponse):
    """A streamed response whose last chunk travels in the final body message.

    Starlette's own ``StreamingResponse`` ends with an empty final message; this one may
    still be in the server's hands when a timeout strikes. Its length is declared, so a
    client can tell a complete body from a cut one.
    """

    def __init__(self, chunks: Sequence[bytes]) -> None:
        async def each_chunk() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        length = sum(len(chunk) for chunk in chunks)
        super().__init__(
            each_chunk(),
            media_type="application/octet-stream",
            headers={"content-length": str(length)},
        )

    async def stream_response(self, send: Send) -> None:
        start: Message = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        await send(start)
        held: bytes | None = None  # each chunk waits until it is known not to be the last
        async for chunk in self.body_iterator:
            if held is not None:
                await send({"type": "http.response.body", "body": held, "more_body": True})
            held = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
        await send({"type": "http.response.body", "body": held or b"", "more_body": False})


class DeliveryTimeout:
    """Pure ASGI middleware: a response must be sent within ``seconds`` of its final message.

    The clock starts when the app hands the final body message on. When it runs out,
    ``on_expiry`` is called and the request is cancelled wherever it is: in these tests,
    inside that final send, which waits for a client that does not read. Added with
    ``app.add_middleware``, it sits inside the layer of ``add_tasks()``.
    """

    def __init__(self, app: ASGIApp, seconds: float, on_expiry: Callable[[Scope], None]) -> None:
        self.app = app
        self.seconds = seconds
        self.on_expiry = on_expiry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with anyio.create_task_group() as group:

            async def expire() -> None:
                await anyio.sleep(self.seconds)  # the time the response has: meant to run out
                self.on_expiry(scope)
                group.cancel_scope.cancel()

            async def send_in_time(message: Message) -> None:
                if is_final(message):
                    group.start_soon(expire)
                await send(message)

            await self.app(scope, receive, send_in_time)
            group.cancel_scope.cancel()  # sent in time: stop the clock
