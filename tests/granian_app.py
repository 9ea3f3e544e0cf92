"""The app ``tests/test_granian.py`` serves with a real granian process.

It runs in granian's worker process, so the test sees it only over HTTP. Everything
of interest lands in :data:`timeline`, in order and stamped with
``time.monotonic_ns()`` (one clock for every process of the machine), and
``GET /report`` hands it over together with the manager's counters once
``manager.join()`` returned.

:class:`Probe` sits between granian and the app and notes what granian took from
the app. A request sent with the ``x-hold-until`` header has its final message held
(after granian's ``send`` returned) until the client posts ``/ack/<name>``, which it
does once it holds the whole response: after-response work that notes, when it
starts, whether that acknowledgement arrived shows whether it started too early.
The probe also notes how a final send that did not return ended (cancelled or
raised), and when granian reported ``http.disconnect`` to the app; and it sets the
acknowledgement ``final send:<path>`` as it hands a final message to granian.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_tasks import Tasks, add_tasks

from .delivery import BIG_CHUNK_SIZE, DeliveryTimeout, FinalChunkResponse, is_final

WAIT = 5.0
"""Seconds any single wait in the app may take."""

HOLD_HEADER = b"x-hold-until"
CHUNKS = (b"one ", b"two ", b"three")
SHUTDOWN_REPORT = "shutdown report:"
"""Starts the line the app prints at the end of its lifespan, followed by JSON."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
    yield
    # add_tasks() drained the manager before the app's own shutdown code runs.
    report = {
        "timeline": timeline,
        "stats": dataclasses.asdict(manager.stats),
        "running": manager.running,
        "tasks left": len(manager.tasks),
    }
    print(SHUTDOWN_REPORT, json.dumps(report), flush=True)


api = FastAPI(lifespan=lifespan)
manager = add_tasks(api)
timeline: list[dict[str, Any]] = []
_acknowledged: dict[str, anyio.Event] = {}


def note(what: str) -> int:
    """Append to the timeline; return the moment noted."""
    now = time.monotonic_ns()
    timeline.append({"what": what, "ns": now})  # one append: safe from worker threads too
    return now


def acknowledgement(name: str) -> anyio.Event:
    event = _acknowledged.get(name)
    if event is None:
        event = _acknowledged[name] = anyio.Event()
    return event


def acknowledged(name: str) -> bool:
    return name in _acknowledged and _acknowledged[name].is_set()


# -- work ---------------------------------------------------------------------------


async def record(what: str) -> None:
    note(what)


def record_sync(what: str) -> None:
    note(what)


async def record_started(what: str, started: anyio.Event) -> None:
    note(what)
    started.set()


def record_started_sync(what: str, started: threading.Event) -> None:
    note(what)
    started.set()


async def after_response_started(what: str, acknowledgement_name: str) -> None:
    had_it = acknowledged(acknowledgement_name)
    note(f"{what} started; client had the whole response: {had_it}")


def after_response_started_sync(what: str, acknowledgement_name: str) -> None:
    had_it = acknowledged(acknowledgement_name)
    note(f"{what} started; client had the whole response: {had_it}")


# -- endpoints ----------------------------------------------------------------------


@api.post("/checkout")
async def checkout(tasks: Tasks) -> dict[str, Any]:
    note("endpoint started")
    immediate_started = anyio.Event()
    tasks.schedule(record_started, "immediate started", immediate_started)
    with anyio.fail_after(WAIT):
        await immediate_started.wait()  # hangs if immediate work waited for the endpoint
    tasks.after_route.schedule(record, "after-route started")
    tasks.after_response.schedule(after_response_started, "after-response", "checkout")
    returned = note("endpoint returned")
    return {"status": "processing", "endpoint_returned_ns": returned}


@api.post("/checkout-sync")
def checkout_sync(tasks: Tasks) -> dict[str, Any]:
    """A ``def`` endpoint: it runs in a worker thread, and so does the ``def`` work."""
    note("endpoint started")
    immediate_started = threading.Event()
    tasks.schedule(record_started_sync, "immediate started", immediate_started)
    overlapped = immediate_started.wait(WAIT)
    tasks.after_route.schedule(record_sync, "after-route started")
    tasks.after_response.schedule(after_response_started_sync, "after-response", "checkout")
    returned = note("endpoint returned")
    return {"immediate ran during the endpoint": overlapped, "endpoint_returned_ns": returned}


@api.get("/stream")
async def stream(tasks: Tasks) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(CHUNKS):
            yield chunk
            with anyio.fail_after(WAIT):
                # Meanwhile, work handed over too early would run.
                await acknowledgement(f"chunk-{index}").wait()

    last_chunk = f"chunk-{len(CHUNKS) - 1}"
    tasks.after_response.schedule(after_response_started, "after-response", last_chunk)
    return StreamingResponse(body(), media_type="text/plain")


@api.get("/file")
async def file(tasks: Tasks) -> FileResponse:
    """This module's own source; granian takes it as ``http.response.pathsend``."""
    tasks.after_response.schedule(after_response_started, "after-response", "file")
    return FileResponse(__file__, media_type="text/plain")


@api.get("/orders/{order_id}")
async def order(order_id: int, tasks: Tasks) -> dict[str, int]:
    tasks.schedule(record, "immediate ran")
    tasks.after_route.schedule(record, "after-route ran")
    tasks.after_response.schedule(record, "after-response ran")
    tasks.after_route.task(run_on_failure=True).schedule(record, "run_on_failure after-route ran")
    tasks.after_response.task(run_on_failure=True).schedule(
        after_response_started, "run_on_failure after-response", "order"
    )
    raise HTTPException(status_code=404, detail=f"no order {order_id}")


async def add_header(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers["x-middleware"] = "saw it"
    return response


# Mounted under the app: it shares the app's manager. Its BaseHTTPMiddleware passes
# the pathsend message on (as a dict in its body iterator) and, in the app's send,
# waits until it has been sent on.
wrapped = FastAPI()
wrapped.add_middleware(BaseHTTPMiddleware, dispatch=add_header)


@wrapped.get("/file")
async def wrapped_file(tasks: Tasks) -> FileResponse:
    tasks.after_response.schedule(after_response_started, "after-response", "wrapped file")
    return FileResponse(__file__, media_type="text/plain")


api.mount("/wrapped", wrapped)


async def long_work(name: str) -> None:
    with anyio.fail_after(WAIT):
        await acknowledgement("finish").wait()  # still running when the client goes away
    note(f"{name} finished")


@api.get("/feed")
async def feed(tasks: Tasks) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"first chunk"
        await anyio.sleep_forever()  # cancelled once granian reports the disconnect

    tasks.schedule(long_work, "immediate")
    tasks.after_route.schedule(long_work, "after-route")
    tasks.after_response.schedule(record, "after-response ran")
    tasks.after_response.task(run_on_failure=True).schedule(
        record, "run_on_failure after-response ran"
    )
    return StreamingResponse(body(), media_type="text/plain")


@api.get("/feed-late")
async def feed_late(tasks: Tasks) -> StreamingResponse:
    """After-response work scheduled by the body, after the response started."""

    async def body() -> AsyncIterator[bytes]:
        yield b"first chunk"
        tasks.after_response.schedule(record, "after-response ran")
        await anyio.sleep_forever()  # cancelled once granian reports the disconnect

    return StreamingResponse(body(), media_type="text/plain")


# -- when is a response delivered? ---------------------------------------------------

GRANIAN_QUEUE = 4
"""Body messages granian queues for hyper, which takes the next one only once it wrote
out the one before: with the big chunk still being written, four fill the queue."""
DELIVERY_TIMEOUT = 0.25
"""Seconds the final message of ``/timed/...`` responses has to be sent."""


def schedule_later_work(tasks: Tasks) -> None:
    tasks.after_route.schedule(record, "after-route ran")
    tasks.after_response.schedule(record, "after-response ran")
    tasks.after_response.task(run_on_failure=True).schedule(
        record, "run_on_failure after-response ran"
    )


def stuck_final_response() -> FinalChunkResponse:
    """Its final message waits in granian's queue while the client does not read."""
    return FinalChunkResponse([bytes(BIG_CHUNK_SIZE), *[b"."] * GRANIAN_QUEUE, b"end"])


@api.get("/one-message")
async def one_message(tasks: Tasks) -> FinalChunkResponse:
    schedule_later_work(tasks)
    return FinalChunkResponse([bytes(BIG_CHUNK_SIZE)])


@api.get("/stuck-final")
async def stuck_final(tasks: Tasks) -> FinalChunkResponse:
    schedule_later_work(tasks)
    return stuck_final_response()


def timed_out(scope: Scope) -> None:
    note("the timeout ran out")
    acknowledgement(f"timed out:{scope['path']}").set()


# Mounted, so its timeout middleware sits inside the layer of add_tasks() and covers
# the app's sends to it, as a timeout middleware added to the app itself would.
timed = FastAPI()
timed.add_middleware(DeliveryTimeout, seconds=DELIVERY_TIMEOUT, on_expiry=timed_out)


@timed.get("/stuck-final")
async def timed_stuck_final(tasks: Tasks) -> FinalChunkResponse:
    schedule_later_work(tasks)
    return stuck_final_response()


api.mount("/timed", timed)


async def unshielded() -> None:
    note("unshielded started")
    acknowledgement("unshielded started").set()
    try:
        await anyio.sleep_forever()  # meant to be cancelled by the shutdown
    finally:
        note("unshielded ended")
        acknowledgement("unshielded ended").set()


async def shielded() -> None:
    note("shielded started")
    acknowledgement("shielded started").set()
    with anyio.fail_after(WAIT):
        await acknowledgement("unshielded ended").wait()  # once shutdown began cancelling
    note("shielded work finished")


@api.post("/imports")
async def start_import(tasks: Tasks) -> dict[str, str]:
    tasks.schedule(unshielded)
    tasks.task(shield=True).schedule(shielded)
    return {"status": "importing"}


@api.post("/ack/{name:path}")
async def ack(name: str) -> None:
    acknowledgement(name).set()


@api.get("/wait/{name:path}")
async def wait(name: str) -> None:
    """Returns once ``name`` was acknowledged (by the client or by the probe)."""
    with anyio.fail_after(WAIT):
        await acknowledgement(name).wait()


@api.get("/report")
async def report() -> dict[str, Any]:
    """The timeline and counters, once no work is pending or running."""
    await manager.join(WAIT)
    return {"timeline": timeline, "stats": dataclasses.asdict(manager.stats)}


# -- the probe ----------------------------------------------------------------------


class Probe:
    """Pure ASGI wrapper between granian and the app; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(("/ack/", "/wait/", "/report")):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        hold_until = dict(scope["headers"]).get(HOLD_HEADER, b"").decode()
        final_send_running = False

        async def noting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                during = " during the final send" if final_send_running else ""
                note(f"http.disconnect received{during}")
            return message

        async def noting_send(message: Message) -> None:
            nonlocal final_send_running
            final = is_final(message) or message["type"] == "http.response.pathsend"
            if final:
                final_send_running = True
                acknowledgement(f"final send:{path}").set()
            try:
                await send(message)
            except anyio.get_cancelled_exc_class():
                if final:
                    note(f"final send cancelled, {handed_over()} handed over")
                raise
            except Exception as error:
                if final:
                    note(f"final send raised {type(error).__name__}")
                raise
            finally:
                final_send_running = False
            kind = message["type"]
            if kind == "http.response.start":
                note(f"response started, {handed_over()} handed over")
            elif kind == "http.response.body" and message.get("more_body", False):
                note("chunk sent")
            else:
                note(f"response complete ({kind}), {handed_over()} handed over")
                if hold_until:
                    with anyio.fail_after(WAIT):
                        await acknowledgement(hold_until).wait()

        try:
            await self.app(scope, noting_receive, noting_send)
        finally:
            note(f"app returned ({path})")
            acknowledgement(f"returned:{path}").set()


def handed_over() -> int:
    """How much work the manager took over so far: counted when handed over."""
    stats = manager.stats
    return len(manager.tasks) + stats.succeeded + stats.failed


app = Probe(api)
"""What granian serves: ``tests.granian_app:app``."""
