"""End to end over real sockets on 127.0.0.1: uvicorn on asyncio, and hypercorn's trio worker.

Each test serves a fresh app, talks to it over loopback and waits on events and
``join()``, every wait bounded. A :class:`Probe` between the server and the app
notes what the server took from the app; it holds the response's final message
until the client confirmed it had the whole response, like a server whose
``send`` completes only on delivery. So after-response work that records, when
it starts, whether the client already had the response shows whether it started
too early.

The tests of "when is a response delivered?" at the end pin, per server, how the
final send ends when the client reads everything, when a timeout cancels that send
while the client does not read, and when the client resets the connection while the
send waits. No server here raises from a send to a client that is gone: uvicorn
drops the message, hypercorn swallows the failed write and reports
``http.disconnect``. So the rule's "the final send raised" case cannot be reached
through them; a reset counts as delivered, and those tests say so.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import anyio
import anyio.abc
import httpx2
import hypercorn.config
import hypercorn.trio
import pytest
import trio
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from hypercorn.typing import ASGIFramework
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_tasks import Task, TaskManager, Tasks, TaskState, add_tasks

from .delivery import BIG_CHUNK_SIZE, DeliveryTimeout, FinalChunkResponse, is_final

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""Seconds any single wait may take before the test fails."""


@pytest.fixture(params=["uvicorn", "hypercorn-trio"])
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend(server_kind: str) -> str:
    # uvicorn runs on asyncio only; hypercorn runs here with its trio worker.
    return "asyncio" if server_kind == "uvicorn" else "trio"


# -- serving ------------------------------------------------------------------------


@dataclass
class RunningServer:
    host: str
    port: int
    request_stop: Callable[[], None]
    stopped: anyio.Event
    """Set once the server returned, which is after the app's lifespan ended."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def shut_down(self) -> None:
        """Stop gracefully, as on SIGTERM, and wait until the app's lifespan has ended."""
        self.request_stop()
        with anyio.fail_after(3 * WAIT):
            await self.stopped.wait()


async def start_uvicorn(group: anyio.abc.TaskGroup, app: ASGIApp) -> RunningServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening already: connections queue until uvicorn accepts them, so nobody polls.
    sock.listen()
    host, port = sock.getsockname()
    config = uvicorn.Config(
        app,
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(WAIT),
    )
    server = uvicorn.Server(config)
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            stopped.set()

    def request_stop() -> None:
        server.should_exit = True

    group.start_soon(run)
    return RunningServer(host, port, request_stop, stopped)


async def start_hypercorn_trio(group: anyio.abc.TaskGroup, app: ASGIApp) -> RunningServer:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # as is: no handlers added
    config.graceful_timeout = WAIT
    shutdown = anyio.Event()
    stopped = anyio.Event()

    async def run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            # Its signature also covers WSGI apps, with an untyped environ dict.
            await hypercorn.trio.serve(  # pyright: ignore[reportUnknownMemberType]
                cast("ASGIFramework", app),  # its scope TypedDicts vs Starlette's Scope mapping
                config,
                shutdown_trigger=shutdown.wait,
                task_status=task_status,
            )
        finally:
            stopped.set()

    binds: list[str] = await group.start(run)
    host, _, port = binds[0].removeprefix("http://").rpartition(":")
    return RunningServer(host, int(port), shutdown.set, stopped)


@asynccontextmanager
async def serve(kind: str, app: ASGIApp) -> AsyncGenerator[RunningServer, None]:
    """Serve ``app`` on a free port of 127.0.0.1; shut down on exit (if the test did not)."""
    start = start_uvicorn if kind == "uvicorn" else start_hypercorn_trio
    async with anyio.create_task_group() as group:
        server = await start(group, app)
        try:
            yield server
        finally:
            try:
                await server.shut_down()
            finally:
                group.cancel_scope.cancel()  # only has work to do if shutdown timed out


@asynccontextmanager
async def client_of(server: RunningServer) -> AsyncGenerator[httpx2.AsyncClient, None]:
    client = httpx2.AsyncClient(base_url=server.url, trust_env=False)
    async with client:
        yield client


class Probe:
    """Pure ASGI wrapper between the server and the app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        manager: TaskManager,
        timeline: list[str],
        *,
        hold_final_message: bool = True,
    ) -> None:
        self.app = app
        self.manager = manager
        self.timeline = timeline
        self.hold_final_message = hold_final_message
        self.client_has_response = anyio.Event()
        """The test sets it once the client holds the whole response."""
        self.app_returned = anyio.Event()
        self.final_send_started = anyio.Event()
        """Set when the server is handed the response's final message."""
        self.final_send: str | None = None
        """How the server's send of that message ended: returned, cancelled or raised."""
        self.disconnect_during_final_send = False
        """Whether the server reported ``http.disconnect`` to the app while that send ran."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        final_send_running = False

        async def noting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and final_send_running:
                self.disconnect_during_final_send = True
            return message

        async def noting_send(message: Message) -> None:
            nonlocal final_send_running
            final = is_final(message)
            if final:
                final_send_running = True
                self.final_send_started.set()
            try:
                await send(message)
            except anyio.get_cancelled_exc_class():
                if final:
                    self.final_send = "cancelled"
                raise
            except Exception as error:
                if final:
                    self.final_send = f"raised {type(error).__name__}"
                raise
            finally:
                final_send_running = False
            if final:
                self.final_send = "returned"
            # How much work the manager took over so far: counted when handed over.
            stats = self.manager.stats
            handed_over = len(self.manager.tasks) + stats.succeeded + stats.failed
            if message["type"] == "http.response.start":
                self.timeline.append(f"response started, {handed_over} handed over")
            elif message.get("more_body", False):
                self.timeline.append("chunk sent")
            else:
                self.timeline.append(f"response complete, {handed_over} handed over")
                if not self.hold_final_message:
                    return
                with anyio.fail_after(WAIT):
                    await self.client_has_response.wait()

        try:
            await self.app(scope, noting_receive, noting_send)
        finally:
            self.app_returned.set()

    async def client_finished(self) -> None:
        """The client holds the whole response: let the server finish the request, then join.

        Joining right away could miss after-response work: the client may have the
        response before the server's last ``send`` returned (see
        ``test_join_waits_for_work_still_waiting_for_its_moment``).
        """
        self.client_has_response.set()
        with anyio.fail_after(WAIT):
            await self.app_returned.wait()
        await self.manager.join(WAIT)

    def after_response_started(self, name: str) -> None:
        """What after-response work notes first thing when it starts."""
        had_it = self.client_has_response.is_set()
        self.timeline.append(f"{name} started; client had the whole response: {had_it}")


def make_app(*, hold_final_message: bool = True) -> tuple[FastAPI, TaskManager, Probe, list[str]]:
    app = FastAPI()
    manager = add_tasks(app)
    timeline: list[str] = []
    probe = Probe(app, manager, timeline, hold_final_message=hold_final_message)
    return app, manager, probe, timeline


# -- the tests ----------------------------------------------------------------------


async def test_all_three_modes_in_one_request(server_kind: str) -> None:
    app, manager, probe, timeline = make_app()
    immediate_started = anyio.Event()

    async def validate_payment() -> None:
        timeline.append("immediate started")
        immediate_started.set()

    async def finalize_order() -> None:
        timeline.append("after-route started")

    async def send_email() -> None:
        probe.after_response_started("after-response")

    @app.post("/checkout")
    async def checkout(tasks: Tasks) -> dict[str, str]:
        timeline.append("endpoint started")
        tasks.schedule(validate_payment)
        with anyio.fail_after(WAIT):
            await immediate_started.wait()  # hangs if immediate work waited for the endpoint
        tasks.after_route.schedule(finalize_order)
        tasks.after_response.schedule(send_email)
        timeline.append("endpoint returned")
        return {"status": "processing"}

    async with serve(server_kind, probe) as server, client_of(server) as client:
        response = await client.post("/checkout")
        await probe.client_finished()

    assert response.json() == {"status": "processing"}
    at = timeline.index
    assert at("endpoint started") < at("immediate started") < at("endpoint returned")
    assert at("endpoint returned") < at("after-route started")
    # Immediate and after-route work were handed over before the response started;
    # after-response work not even when its last byte had been sent.
    assert at("endpoint returned") < at("response started, 2 handed over")
    assert at("response started, 2 handed over") < at("response complete, 2 handed over")
    after_response = "after-response started; client had the whole response: True"
    assert at("response complete, 2 handed over") < at(after_response)
    assert at("after-route started") < at(after_response)
    assert manager.stats.succeeded == 3
    assert manager.stats.discarded == 0


async def test_join_waits_for_work_still_waiting_for_its_moment(server_kind: str) -> None:
    app, manager, probe, timeline = make_app()
    handles: list[Task[None]] = []

    async def send_welcome_email() -> None:
        timeline.append("welcome e-mail sent")

    @app.post("/signup")
    async def signup(tasks: Tasks) -> dict[str, str]:
        handles.append(tasks.after_response.schedule(send_welcome_email))
        return {"status": "welcome"}

    async with serve(server_kind, probe) as server, client_of(server) as client:
        response = await client.post("/signup")
        # The client holds the whole response; the server's last send() has not returned.
        probe.client_has_response.set()
        assert not handles[0].done
        await manager.join(WAIT)
        done_after_join = handles[0].done

    assert response.json() == {"status": "welcome"}
    assert done_after_join
    assert handles[0].state is TaskState.SUCCEEDED


async def test_streamed_response_hands_over_after_the_last_chunk(
    server_kind: str,
) -> None:
    # Starlette's StreamingResponse stops as soon as receive() reports the end of the
    # response, cancelling a final send still in progress: so no holding it here.
    # The body waits for the client to acknowledge each chunk instead.
    app, manager, probe, timeline = make_app(hold_final_message=False)
    chunks = (b"one ", b"two ", b"three")
    ends = list(itertools.accumulate(len(chunk) for chunk in chunks))
    acknowledged = [anyio.Event() for _ in chunks]

    async def body() -> AsyncIterator[bytes]:
        for chunk, ack in zip(chunks, acknowledged, strict=True):
            yield chunk
            with anyio.fail_after(WAIT):
                await ack.wait()  # meanwhile, work handed over too early would run

    async def notify() -> None:
        had_it = acknowledged[-1].is_set()
        timeline.append(f"after-response started; client had all the content: {had_it}")

    @app.get("/report")
    async def report(tasks: Tasks) -> StreamingResponse:
        tasks.after_response.schedule(notify)
        return StreamingResponse(body(), media_type="text/plain")

    received = b""
    async with serve(server_kind, probe) as server, client_of(server) as client:
        async with client.stream("GET", "/report") as response:
            async for data in response.aiter_raw():
                received += data
                for end, ack in zip(ends, acknowledged, strict=True):
                    if len(received) >= end:
                        ack.set()
        await probe.client_finished()

    assert received == b"one two three"
    assert timeline[:4] == ["response started, 0 handed over", *["chunk sent"] * 3]
    assert timeline[-1] == "after-response started; client had all the content: True"
    assert manager.stats.succeeded == 1
    if server_kind == "uvicorn":
        # The final send returns, and nothing was handed over before it did.
        assert probe.final_send == "returned"
        assert "response complete, 0 handed over" in timeline
        assert not probe.disconnect_during_final_send
    else:
        # hypercorn reports http.disconnect inside its final send, once it wrote the
        # last bytes; Starlette then cancels that send. Delivered all the same.
        assert probe.final_send == "cancelled"
        assert probe.disconnect_during_final_send


async def test_client_gone_mid_stream(server_kind: str) -> None:
    """After-response work is discarded; work already handed over runs on, uncancelled."""
    app, manager, probe, timeline = make_app()
    may_finish = anyio.Event()
    handles: dict[str, Task[None]] = {}

    async def long_work(name: str) -> None:
        with anyio.fail_after(WAIT):
            await may_finish.wait()  # still running when the client goes away
        timeline.append(f"{name} finished")

    async def record(what: str) -> None:
        timeline.append(what)

    async def body() -> AsyncIterator[bytes]:
        yield b"first chunk"
        await anyio.sleep_forever()  # cancelled once the server reports the disconnect

    @app.get("/feed")
    async def feed(tasks: Tasks) -> StreamingResponse:
        handles["immediate"] = tasks.schedule(long_work, "immediate")
        handles["after_route"] = tasks.after_route.schedule(long_work, "after-route")
        handles["after_response"] = tasks.after_response.schedule(record, "after-response ran")
        handles["on_failure"] = tasks.after_response.task(run_on_failure=True).schedule(
            record, "run_on_failure after-response ran"
        )
        return StreamingResponse(body(), media_type="text/plain")

    async with serve(server_kind, probe) as server:
        received = b""
        with anyio.fail_after(WAIT):
            async with await anyio.connect_tcp(server.host, server.port) as connection:
                await connection.send(b"GET /feed HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                while b"first chunk" not in received:
                    received += await connection.receive()
            # The connection is closed: the client left before the end of the body.
            await probe.app_returned.wait()
        # The client is gone and the request is over: handed-over work still runs.
        assert handles["immediate"].state is TaskState.RUNNING
        assert handles["after_route"].state is TaskState.RUNNING
        assert handles["after_response"].state is TaskState.DISCARDED
        may_finish.set()
        await manager.join(WAIT)

    assert received.startswith(b"HTTP/1.1 200")
    assert {name: task.state for name, task in handles.items()} == {
        "immediate": TaskState.SUCCEEDED,
        "after_route": TaskState.SUCCEEDED,
        "after_response": TaskState.DISCARDED,
        "on_failure": TaskState.SUCCEEDED,
    }
    assert "after-response ran" not in timeline
    assert {"immediate finished", "after-route finished", "run_on_failure after-response ran"} <= (
        set(timeline)
    )
    assert manager.stats.discarded == 1
    assert manager.stats.cancelled == 0


async def test_endpoint_raising_http_exception(server_kind: str) -> None:
    """Only run_on_failure work of the later moments runs, after the error response."""
    app, manager, probe, timeline = make_app()

    async def record(what: str) -> None:
        timeline.append(what)

    async def apologize() -> None:
        probe.after_response_started("run_on_failure after-response")

    @app.get("/orders/{order_id}")
    async def order(order_id: int, tasks: Tasks) -> dict[str, int]:
        tasks.schedule(record, "immediate ran")
        tasks.after_route.schedule(record, "after-route ran")
        tasks.after_response.schedule(record, "after-response ran")
        tasks.after_response.task(run_on_failure=True).schedule(apologize)
        raise HTTPException(status_code=404, detail=f"no order {order_id}")

    async with serve(server_kind, probe) as server, client_of(server) as client:
        response = await client.get("/orders/7")
        await probe.client_finished()

    assert response.status_code == 404
    assert response.json() == {"detail": "no order 7"}
    assert "after-route ran" not in timeline
    assert "after-response ran" not in timeline
    on_failure = "run_on_failure after-response started; client had the whole response: True"
    assert timeline.index("response complete, 1 handed over") < timeline.index(on_failure)
    assert "immediate ran" in timeline
    assert manager.stats.discarded == 2
    assert manager.stats.succeeded == 2


async def test_sync_endpoint_with_all_three_modes(server_kind: str) -> None:
    """A ``def`` endpoint runs in a worker thread; so does the ``def`` work it schedules."""
    app, manager, probe, timeline = make_app()
    immediate_started = threading.Event()

    def validate_payment() -> None:
        timeline.append("immediate started")
        immediate_started.set()

    def finalize_order() -> None:
        timeline.append("after-route started")

    def send_email() -> None:
        probe.after_response_started("after-response")

    @app.post("/checkout")
    def checkout(tasks: Tasks) -> dict[str, bool]:
        timeline.append("endpoint started")
        tasks.schedule(validate_payment)
        overlapped = immediate_started.wait(WAIT)
        tasks.after_route.schedule(finalize_order)
        tasks.after_response.schedule(send_email)
        timeline.append("endpoint returned")
        return {"immediate ran during the endpoint": overlapped}

    async with serve(server_kind, probe) as server, client_of(server) as client:
        response = await client.post("/checkout")
        await probe.client_finished()

    assert response.json() == {"immediate ran during the endpoint": True}
    at = timeline.index
    assert at("endpoint started") < at("immediate started") < at("endpoint returned")
    assert at("endpoint returned") < at("after-route started")
    assert at("endpoint returned") < at("response started, 2 handed over")
    after_response = "after-response started; client had the whole response: True"
    assert at("response complete, 2 handed over") < at(after_response)
    # No order between after-route and after-response here: both were started in
    # order, but their functions run in worker threads, which the OS schedules.
    assert manager.stats.succeeded == 3


async def test_graceful_shutdown_cancels_unshielded_and_finishes_shielded(
    server_kind: str,
) -> None:
    app, manager, probe, timeline = make_app()
    unshielded_started = anyio.Event()
    unshielded_ended = anyio.Event()
    shielded_started = anyio.Event()
    handles: dict[str, Task[None]] = {}

    async def unshielded() -> None:
        unshielded_started.set()
        try:
            await anyio.sleep_forever()  # meant to be cancelled by the shutdown
        finally:
            unshielded_ended.set()

    async def shielded() -> None:
        shielded_started.set()
        with anyio.fail_after(WAIT):
            await unshielded_ended.wait()  # set once shutdown has begun cancelling
        timeline.append("shielded work finished")

    @app.post("/imports")
    async def start_import(tasks: Tasks) -> dict[str, str]:
        handles["unshielded"] = tasks.schedule(unshielded)
        handles["shielded"] = tasks.task(shield=True).schedule(shielded)
        return {"status": "importing"}

    async with serve(server_kind, probe) as server:
        async with client_of(server) as client:
            response = await client.post("/imports")
        probe.client_has_response.set()
        with anyio.fail_after(WAIT):
            await probe.app_returned.wait()
            await unshielded_started.wait()
            await shielded_started.wait()
        assert manager.running

        await server.shut_down()

        assert not manager.running
        assert handles["unshielded"].state is TaskState.CANCELLED
        assert handles["shielded"].state is TaskState.SUCCEEDED

    assert response.json() == {"status": "importing"}
    assert timeline[-1] == "shielded work finished"
    assert manager.stats.cancelled == 1
    assert manager.stats.succeeded == 1
    assert manager.tasks == []


# -- when is a response delivered? ----------------------------------------------------
#
# The rule (SPEC 2.7, docs/timing.md): a final send that returns delivered the
# response; one that raised or was cancelled did not, unless the server reported
# http.disconnect to the app while it ran. What each server does when the client
# stops reading, when a timeout cancels the final send, and when the client resets
# the connection while that send waits, is pinned below, per server.

DELIVERY_TIMEOUT = 0.25
"""Seconds ``DeliveryTimeout`` gives a response from its final message on."""


def make_delivery_app(
    chunks: list[bytes], *, timeout: bool
) -> tuple[TaskManager, Probe, list[str], anyio.Event]:
    """``GET /download`` sends ``chunks``, the last one in the final message."""
    app, manager, probe, timeline = make_app(hold_final_message=False)
    timed_out = anyio.Event()
    if timeout:

        def expired(scope: Scope) -> None:
            timed_out.set()

        app.add_middleware(DeliveryTimeout, seconds=DELIVERY_TIMEOUT, on_expiry=expired)

    async def record(what: str) -> None:
        timeline.append(what)

    @app.get("/download")
    async def download(tasks: Tasks) -> FinalChunkResponse:
        tasks.after_route.schedule(record, "after-route ran")
        tasks.after_response.schedule(record, "after-response ran")
        tasks.after_response.task(run_on_failure=True).schedule(
            record, "run_on_failure after-response ran"
        )
        return FinalChunkResponse(chunks)

    return manager, probe, timeline, timed_out


@asynccontextmanager
async def request_without_reading(
    server: RunningServer, path: str
) -> AsyncGenerator[anyio.abc.SocketStream, None]:
    """GET ``path`` and read the response's head only: not a byte of its body."""
    with anyio.fail_after(WAIT):
        connection = await anyio.connect_tcp(server.host, server.port)
    async with connection:
        head = b""
        with anyio.fail_after(WAIT):
            await connection.send(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
            while not head.endswith(b"\r\n\r\n"):
                head += await connection.receive(1)
        assert head.startswith(b"HTTP/1.1 200")
        yield connection


async def read_body(connection: anyio.abc.SocketStream, up_to: int) -> int:
    """Read until ``up_to`` bytes or the end of the stream; return how many came."""
    size = 0
    with anyio.fail_after(WAIT):
        while size < up_to:
            try:
                size += len(await connection.receive())
            except anyio.EndOfStream:
                break
    return size


async def reset(connection: anyio.abc.SocketStream) -> None:
    """Close the connection with a TCP reset, as a client that crashed does."""
    raw = connection.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await connection.aclose()


def assert_delivered(manager: TaskManager, timeline: list[str]) -> None:
    assert {"after-route ran", "after-response ran", "run_on_failure after-response ran"} <= (
        set(timeline)
    )
    assert manager.stats.succeeded == 3
    assert manager.stats.discarded == 0


def assert_not_delivered(manager: TaskManager, timeline: list[str]) -> None:
    assert "after-response ran" not in timeline
    assert {"after-route ran", "run_on_failure after-response ran"} <= set(timeline)
    assert manager.stats.succeeded == 2
    assert manager.stats.discarded == 1


@pytest.mark.parametrize("server_kind", ["uvicorn"])
async def test_uvicorn_timeout_cancels_a_final_send_waiting_for_the_client(
    server_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled before it wrote anything: not delivered.

    uvicorn's send puts a message in its write buffer and returns; the next send first
    waits until the client took enough of that buffer. The big chunk fills it, so the
    final send waits there until the timeout cancels it.
    """
    manager, probe, timeline, timed_out = make_delivery_app(
        [bytes(BIG_CHUNK_SIZE), b"end"], timeout=True
    )
    async with (
        serve(server_kind, probe) as server,
        request_without_reading(server, "/download") as connection,
    ):
        with anyio.fail_after(WAIT):
            await probe.app_returned.wait()
        await manager.join(WAIT)
        # uvicorn still sends what it buffered, then closes: the body is cut short.
        received = await read_body(connection, BIG_CHUNK_SIZE + len(b"end"))

    assert timed_out.is_set()
    assert probe.final_send == "cancelled"
    assert not probe.disconnect_during_final_send
    assert received == BIG_CHUNK_SIZE
    assert "ASGI callable returned without completing response." in caplog.text
    assert_not_delivered(manager, timeline)


@pytest.mark.parametrize("server_kind", ["uvicorn"])
async def test_uvicorn_counts_a_buffered_final_message_as_sent(server_kind: str) -> None:
    """A final message that fits uvicorn's write buffer is sent the moment it is taken.

    The send returns at once, whether or not the client ever reads it: delivered.
    """
    manager, probe, timeline, _ = make_delivery_app([bytes(BIG_CHUNK_SIZE)], timeout=False)
    async with (
        serve(server_kind, probe) as server,
        request_without_reading(server, "/download") as connection,
    ):
        with anyio.fail_after(WAIT):
            await probe.app_returned.wait()
        await manager.join(WAIT)
        assert_delivered(manager, timeline)  # not a byte of the body read yet
        received = await read_body(connection, BIG_CHUNK_SIZE)

    assert probe.final_send == "returned"
    assert received == BIG_CHUNK_SIZE


@pytest.mark.parametrize("server_kind", ["uvicorn"])
async def test_uvicorn_client_resets_during_the_final_send(server_kind: str) -> None:
    """The send to a client that is gone returns without error: delivered.

    uvicorn cannot write the final message any more and drops it silently.
    """
    manager, probe, timeline, _ = make_delivery_app([bytes(BIG_CHUNK_SIZE), b"end"], timeout=False)
    async with serve(server_kind, probe) as server:
        async with request_without_reading(server, "/download") as connection:
            with anyio.fail_after(WAIT):
                await probe.final_send_started.wait()  # and waits for the client to read
            await reset(connection)
        with anyio.fail_after(WAIT):
            await probe.app_returned.wait()
        await manager.join(WAIT)

    # uvicorn wakes the app's receive and the waiting send at once. Starlette's
    # disconnect listener, woken first, cancels the send, but its wait is over by then.
    assert probe.disconnect_during_final_send
    assert probe.final_send == "returned"
    assert_delivered(manager, timeline)


@pytest.mark.parametrize("server_kind", ["hypercorn-trio"])
async def test_hypercorn_timeout_cancels_the_final_send_only_after_the_write(
    server_kind: str,
) -> None:
    """Cancelled once the client had every byte: not delivered all the same.

    hypercorn writes a message out before its send returns, shielded from cancellation.
    The timeout runs out while the final send waits for the client; it takes effect
    once the client has read the whole body, before hypercorn reports the disconnect.
    """
    manager, probe, timeline, timed_out = make_delivery_app([bytes(BIG_CHUNK_SIZE)], timeout=True)
    async with serve(server_kind, probe) as server:
        async with request_without_reading(server, "/download") as connection:
            with anyio.fail_after(WAIT):
                await timed_out.wait()
            assert not probe.app_returned.is_set()  # still writing the final message
            received = await read_body(connection, BIG_CHUNK_SIZE)
            with anyio.fail_after(WAIT):
                await probe.app_returned.wait()
        await manager.join(WAIT)

    assert received == BIG_CHUNK_SIZE
    assert probe.final_send == "cancelled"
    assert not probe.disconnect_during_final_send
    assert_not_delivered(manager, timeline)


@pytest.mark.parametrize("server_kind", ["hypercorn-trio"])
async def test_hypercorn_client_resets_during_the_final_send(server_kind: str) -> None:
    """hypercorn swallows the failed write and reports the disconnect: delivered."""
    manager, probe, timeline, _ = make_delivery_app([bytes(BIG_CHUNK_SIZE)], timeout=False)
    async with serve(server_kind, probe) as server:
        async with request_without_reading(server, "/download") as connection:
            with anyio.fail_after(WAIT):
                await probe.final_send_started.wait()  # and waits for the client to read
            await reset(connection)
        with anyio.fail_after(WAIT):
            await probe.app_returned.wait()
        await manager.join(WAIT)

    # The write fails inside the final send; hypercorn reports http.disconnect, and
    # Starlette's disconnect listener cancels that send.
    assert probe.disconnect_during_final_send
    assert probe.final_send == "cancelled"
    assert_delivered(manager, timeline)
