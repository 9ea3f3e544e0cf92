"""Serve the checkout example with uvicorn on 127.0.0.1, send one request, print the timeline.

Run it with ``scripts/demo``; it needs nothing but fastapi-tasks and uvicorn (the client
is Python's own ``http.client``). The timeline shows the three moments at work:

- immediate work (the payment check) starts at the endpoint's next ``await`` and runs
  while the endpoint still works;
- after-route work (finalizing the order) is handed over before the response starts and
  runs alongside it: whether its first line comes before or after the response's last
  byte is up to the event loop;
- after-response work (the e-mail and the shipping notice) starts only after the
  response's last byte was sent, and still runs while the client holds its response.

``scripts/demo --serve`` then keeps serving, sending a checkout every second, so the
monitor page whose address it prints stays live until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import sys
from dataclasses import dataclass
from typing import Any

import anyio.lowlevel
import uvicorn
from checkout import Timeline, create_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_tasks import Task, TaskManager, configure_logging

__all__ = ["DemoResult", "main", "render", "run_demo"]

IMMEDIATE_WORK = "validate_payment"
AFTER_ROUTE_WORK = "finalize_order"
AFTER_RESPONSE_WORK = ("send_confirmation_email", "notify_shipping")


def short_name(task: Task[Any]) -> str:
    """The function's own name: a qualified name carries ``create_app.<locals>.``."""
    return task.name.rsplit(".", 1)[-1]


class ResponseMarker:
    """ASGI wrapper that marks when the server took the response's headers and its last byte.

    It wraps the app from outside, so when the response's first message reaches it, the
    library has already handed the after-route work over: that work is live by then.
    """

    def __init__(self, app: ASGIApp, timeline: Timeline, manager: TaskManager) -> None:
        self.app = app
        self.timeline = timeline
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                for task in self.manager.tasks:
                    if task.mode != "immediate":
                        mode = task.mode.replace("_", " ")
                        self.timeline.mark(
                            f"{short_name(task)} handed over ({mode}), before the response starts"
                        )
            await send(message)
            if message["type"] == "http.response.start":
                self.timeline.mark("server sent the response headers")
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


def post_checkout(host: str, port: int) -> tuple[int, dict[str, Any]]:
    """Send the checkout request as a plain HTTP client would; runs in a worker thread."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(
            "POST",
            "/checkout",
            body=json.dumps({"cart_id": 42, "email": "ada@example.com"}),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


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
        # anyio loads its asyncio backend on first use: do that now, not in the request.
        await anyio.lowlevel.checkpoint()
        timeline.start()
        timeline.mark("client sent POST /checkout")
        status_code, body = await asyncio.to_thread(post_checkout, host, port)
        # Marked on the event loop, like the server's marks, so the order is exact.
        timeline.mark("client received the response")
        await manager.join(timeout=5)
        result = DemoResult(url, monitor_url, status_code, body, timeline)
        if serve:
            print(render(result), flush=True)
            print(f"serving until Ctrl-C; watch {monitor_url}", flush=True)
            while True:
                await asyncio.sleep(1.0)  # the pace of the checkouts, not a wait for them
                await asyncio.to_thread(post_checkout, host, port)
    finally:
        server.should_exit = True
        await serving
    return result


def render(result: DemoResult) -> str:
    """The timeline as text, one line per moment, then how to read it."""
    timeline = result.timeline
    lines = [
        f"POST {result.url} -> {result.status_code} {json.dumps(result.body)}",
        f"monitor page: {result.monitor_url} (scripts/demo --serve keeps it live)",
        "",
        "      ms  what happened",
    ]
    lines += [f"{moment:8.1f}  {label}" for moment, label in timeline.events]
    returned = timeline.at("endpoint returned")
    last_byte = timeline.at("server sent the response's last byte")
    immediate = timeline.at(f"{IMMEDIATE_WORK} started (immediate)")
    after_route = timeline.at(f"{AFTER_ROUTE_WORK} started (after route)")
    received = timeline.at("client received the response")
    finished = max(timeline.at(f"{name} finished") for name in AFTER_RESPONSE_WORK)
    side = "before" if after_route < last_byte else "after"
    verdict = "yes" if received < finished else "NO"
    first_after_response = min(
        timeline.at(f"{name} started (after response)") for name in AFTER_RESPONSE_WORK
    )
    lines += [
        "",
        "How to read it:",
        f"- immediate ({IMMEDIATE_WORK}): starts at the endpoint's next `await`;",
        f"  here at {immediate:.1f} ms, while the endpoint still ran"
        f" (it returned at {returned:.1f} ms).",
        f"- after route ({AFTER_ROUTE_WORK}): handed over before the response starts,"
        " runs alongside it;",
        f"  here its first line ran at {after_route:.1f} ms, {side} the last byte"
        f" ({last_byte:.1f} ms).",
        f"- after response ({', '.join(AFTER_RESPONSE_WORK)}):",
        "  handed over after the response's last byte was sent;"
        f" here it started at {first_after_response:.1f} ms.",
        "- none of them delayed the response.",
        "",
        f"client had its response at {received:.1f} ms; "
        f"the after-response work finished at {finished:.1f} ms",
        f"client got its response before the after-response work finished: {verdict}",
    ]
    return "\n".join(lines)


def main() -> None:
    configure_logging()  # the library's lines (the shutdown summary) like uvicorn's
    if "--serve" in sys.argv[1:]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(serve=True))
        return
    print(render(asyncio.run(run_demo())))


if __name__ == "__main__":
    main()
