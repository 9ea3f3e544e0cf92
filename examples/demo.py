"""Serve the checkout example with uvicorn on 127.0.0.1, send one request, print the timeline.

Run it with ``scripts/demo``; ``scripts/demo --serve`` then keeps serving, sending a
checkout every second, so the monitor page whose address it prints stays live until
Ctrl-C. The printed timeline shows the three moments at
work: the payment check overlapping the endpoint, the order finalization
starting after the endpoint returned, and the e-mail and shipping notice
starting after the response's last byte left the server, still running while
the client already holds its response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from dataclasses import dataclass
from typing import Any

import httpx2
import uvicorn
from checkout import Timeline, create_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_tasks import TaskManager

__all__ = ["DemoResult", "main", "run_demo"]

AFTER_RESPONSE_WORK = ("send_confirmation_email", "notify_shipping")


class ResponseMarker:
    """ASGI wrapper that marks when the server took the response's headers and its last byte."""

    def __init__(self, app: ASGIApp, timeline: Timeline, manager: TaskManager) -> None:
        self.app = app
        self.timeline = timeline
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marking_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                # Function names only: a task's qualified name carries "create_app.<locals>."
                live = ", ".join(task.name.rsplit(".", 1)[-1] for task in self.manager.tasks)
                self.timeline.mark(f"server sent the response headers (live tasks: {live})")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.timeline.mark("server sent the response's last byte")

        await self.app(scope, receive, marking_send)


@dataclass
class DemoResult:
    """What one run of the demo saw."""

    url: str
    monitor_url: str
    status_code: int
    body: dict[str, Any]
    timeline: Timeline


def listening_socket() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1.

    Listening before uvicorn starts means a client can connect right away: the
    kernel queues the connection until uvicorn accepts it, so nobody has to poll
    for the server to come up.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def run_demo(serve: bool = False) -> DemoResult:
    """Start uvicorn, send one checkout request, wait for all work, stop uvicorn.

    With ``serve``, print the result and keep serving (a checkout a second) until
    cancelled.
    """
    timeline = Timeline()
    app, manager = create_app(timeline)
    sock = listening_socket()
    host, port = sock.getsockname()
    config = uvicorn.Config(
        ResponseMarker(app, timeline, manager),
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://{host}:{port}/checkout"
    monitor_url = f"http://{host}:{port}/tasks/"
    try:
        # Built first, then entered: httpx2 types __aenter__ with typing.Self, which
        # type checkers targeting Python 3.10 cannot resolve.
        client = httpx2.AsyncClient(trust_env=False)
        async with client:
            timeline.start()
            timeline.mark("client sent POST /checkout")
            response = await client.post(url, json={"cart_id": 42, "email": "ada@example.com"})
            timeline.mark("client received the response")
            await manager.join(timeout=5)
            result = DemoResult(url, monitor_url, response.status_code, response.json(), timeline)
            if serve:
                print(render(result), flush=True)
                print(f"serving until Ctrl-C; watch {monitor_url}", flush=True)
                while True:
                    await asyncio.sleep(1.0)
                    await client.post(url, json={"cart_id": 43, "email": "bob@example.com"})
    finally:
        server.should_exit = True
        await serving
    return result


def render(result: DemoResult) -> str:
    """The timeline as text, one line per moment."""
    timeline = result.timeline
    lines = [
        f"POST {result.url} -> {result.status_code} {json.dumps(result.body)}",
        f"monitor page: {result.monitor_url} (scripts/demo --serve keeps it live)",
        "",
        "      ms  what happened",
    ]
    lines += [f"{moment:8.1f}  {label}" for moment, label in timeline.events]
    received = timeline.at("client received the response")
    finished = max(timeline.at(f"{name} finished") for name in AFTER_RESPONSE_WORK)
    verdict = "yes" if received < finished else "NO"
    lines += [
        "",
        f"client had its response at {received:.1f} ms; "
        f"the after-response work finished at {finished:.1f} ms",
        f"client got its response before the after-response work finished: {verdict}",
    ]
    return "\n".join(lines)


def main() -> None:
    if "--serve" in sys.argv[1:]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(serve=True))
        return
    print(render(asyncio.run(run_demo())))


if __name__ == "__main__":
    main()
