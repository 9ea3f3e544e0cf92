"""End to end under granian: a real server process on 127.0.0.1, one worker, ASGI.

Each test starts granian serving ``tests.granian_app:app`` (see that module for the
probe between granian and the app, the timeline it keeps and the acknowledgements
that hold a response's final message until the client has the whole response),
talks to it over loopback, then fetches ``/report``: the app's timeline and
counters once ``manager.join()`` returned there. Every wait is bounded; the server
process is always stopped, and killed if it does not stop in time.

The tests of "when is a response delivered?" at the end pin how granian's final send
ends: at once for a message granian takes whole; cancelled by a timeout while it
waits for room in granian's queue of body chunks; and returning, without an error,
when the client resets the connection meanwhile (granian logs the failed write and
tells the app nothing, so the rule's "the final send raised" case is never reached).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx2
import pytest

from .delivery import BIG_CHUNK_SIZE

pytest.importorskip(
    "granian",
    reason="granian is installed only on Pythons its 2.8.7 release ships wheels for "
    "(see the test extra in pyproject.toml)",
)

WAIT = 5.0
"""Seconds any single wait may take before the test fails."""

ROOT = Path(__file__).resolve().parents[1]
APP_MODULE = Path(__file__).with_name("granian_app.py")
TARGET = "tests.granian_app:app"
READY = "Started worker-1"
"""Logged once the worker finished the app's lifespan startup; it may still be binding."""
HOLD = "x-hold-until"
"""Request header: the probe holds the final message until ``/ack/<value>`` arrives."""
CHUNKS = (b"one ", b"two ", b"three")
"""What ``/stream`` sends, one chunk at a time (as in the app module)."""
SHUTDOWN_REPORT = "shutdown report:"
"""Starts the line the app prints at the end of its lifespan (as in the app module)."""
GRANIAN_QUEUE = 4
"""One-byte chunks ``/stuck-final`` sends after its big one (as in the app module)."""
START_ATTEMPTS = 3
"""Another process may take the free port we picked before granian binds it."""
CONNECT_ATTEMPTS = 12
"""Tries to connect once the worker started (it binds its own socket)."""


# -- serving ------------------------------------------------------------------------


class LogReader(threading.Thread):
    """Reads the server's output to its end, so the pipe never fills up."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []
        self.serving = False
        self.settled = threading.Event()
        """Set once the server serves, or its output ended (it exited)."""

    def run(self) -> None:
        with self.stream:
            for line in self.stream:
                self.lines.append(line.rstrip("\n"))
                if READY in line:
                    self.serving = True
                    self.settled.set()
        self.settled.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Report:
    """What ``/report`` returned: the app's timeline and its manager's counters."""

    timeline: list[str]
    moments: list[int]
    stats: dict[str, int]

    @property
    def sent(self) -> list[str]:
        """The timeline without the probe's notes of when the app returned or heard of a disconnect.

        Either may come before or after after-response work started.
        """
        return [
            what
            for what in self.timeline
            if not what.startswith(("app returned", "http.disconnect received"))
        ]

    def at(self, what: str) -> int:
        """Position of the first entry ``what`` in the timeline."""
        return self.timeline.index(what)

    def ns(self, what: str) -> int:
        """``time.monotonic_ns()`` when ``what`` was noted."""
        return self.moments[self.at(what)]


@dataclass
class Server:
    process: subprocess.Popen[str]
    log: LogReader
    client: httpx2.Client

    def shut_down(self) -> int:
        """Stop the server gracefully and return its exit code."""
        return stop(self.process, self.log)

    def shutdown_report(self) -> dict[str, Any]:
        """What the app printed at the end of its lifespan."""
        for line in self.log.lines:
            if line.startswith(SHUTDOWN_REPORT):
                report: dict[str, Any] = json.loads(line.removeprefix(SHUTDOWN_REPORT))
                return report
        pytest.fail(f"the app printed no shutdown report:\n{self.log.text}")

    def wait_for(self, name: str) -> None:
        """Return once the app saw ``name`` happen (bounded by the app's own wait)."""
        self.client.get(f"/wait/{name}").raise_for_status()

    def ack(self, name: str) -> None:
        """Tell the app the client holds what ``name`` stands for."""
        self.client.post(f"/ack/{name}").raise_for_status()

    def report(self) -> Report:
        response = self.client.get("/report")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        entries: list[dict[str, Any]] = body["timeline"]
        return Report(
            timeline=[str(entry["what"]) for entry in entries],
            moments=[int(entry["ns"]) for entry in entries],
            stats={str(name): int(count) for name, count in body["stats"].items()},
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_granian(port: int) -> tuple[subprocess.Popen[str], LogReader]:
    # Settings come from the command line only, not from GRANIAN_* variables around us.
    env = {name: value for name, value in os.environ.items() if not name.startswith("GRANIAN_")}
    command = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--http",
        "1",
        "--loop",
        "asyncio",
        "--log",
        "--log-level",
        "info",
        "--working-dir",
        str(ROOT),
        TARGET,
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group: its worker can be found (and killed) by the group's id.
        start_new_session=True,
    )
    assert process.stdout is not None
    log = LogReader(process.stdout)
    log.start()
    return process, log


def stop(process: subprocess.Popen[str], log: LogReader) -> int:
    """Stop gracefully, as on SIGTERM, and return the exit code; kill what does not stop.

    Only ever signals the server's own process group, and only while a member is
    known to be alive, so the group's id cannot have been reused.
    """
    if process.returncode is None:
        process.terminate()
        try:
            process.wait(timeout=2 * WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # not reaped yet: the group is ours
            process.wait(timeout=WAIT)
    log.join(WAIT)
    if log.is_alive():
        # The output is still open: its worker outlived the main process.
        os.killpg(process.pid, signal.SIGKILL)
        log.join(WAIT)
    return process.wait(timeout=0)  # reaped already: returns at once


def wait_until_listening(process: subprocess.Popen[str], port: int) -> bool:
    """Whether the worker accepts connections before ``WAIT`` seconds passed.

    On Linux each granian worker binds its own socket (``SO_REUSEPORT``), and
    nothing tells when: so try to connect, waiting a little longer each time
    (and no longer once the server exited).
    """
    deadline = time.monotonic() + WAIT
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
                return True
        except ConnectionRefusedError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            process.wait(timeout=min(0.005 * 2**attempt, remaining))
        except subprocess.TimeoutExpired:
            continue
        return False  # it exited
    return False


def start_serving() -> tuple[subprocess.Popen[str], LogReader, int]:
    """Start granian on a free port; return once it serves (its process, log and port)."""
    logs: list[str] = []
    for _ in range(START_ATTEMPTS):
        port = free_port()
        process, log = start_granian(port)
        if log.settled.wait(WAIT) and log.serving and wait_until_listening(process, port):
            return process, log, port
        stop(process, log)
        logs.append(log.text)
        if "Address already in use" not in log.text:
            break
    pytest.fail("granian did not start serving:\n" + "\n--\n".join(logs))


@pytest.fixture
def server() -> Iterator[Server]:
    """granian serving the app on a free port of 127.0.0.1; stopped (or killed) at the end."""
    process, log, port = start_serving()
    base_url = f"http://127.0.0.1:{port}"
    # A little longer than the app's own waits, so theirs report first.
    timeout = httpx2.Timeout(2 * WAIT)
    try:
        client = httpx2.Client(base_url=base_url, trust_env=False, timeout=timeout)
        with client:
            yield Server(process, log, client)
    finally:
        exit_code = stop(process, log)
    assert exit_code == 0, log.text
    assert "Traceback" not in log.text, log.text
    assert "[ERROR]" not in log.text, log.text
    assert "[WARNING]" not in log.text, log.text  # such as: the app's lifespan failed


# -- the tests ----------------------------------------------------------------------


def test_all_three_modes_in_one_request(server: Server) -> None:
    response = server.client.post("/checkout", headers={HOLD: "checkout"})
    client_had_response = time.monotonic_ns()
    server.ack("checkout")
    report = server.report()

    assert response.json()["status"] == "processing"
    at = report.at
    assert at("endpoint started") < at("immediate started") < at("endpoint returned")
    # The moment the body tells the client about is the one in the app's timeline.
    assert report.ns("endpoint returned") == response.json()["endpoint_returned_ns"]
    assert at("endpoint returned") < at("after-route started")
    # Immediate and after-route work were handed over before the response started;
    # after-response work not even when its last byte had been sent.
    assert at("endpoint returned") < at("response started, 2 handed over")
    complete = "response complete (http.response.body), 2 handed over"
    assert at("response started, 2 handed over") < at(complete)
    after_response = "after-response started; client had the whole response: True"
    assert at(complete) < at(after_response)
    assert at("after-route started") < at(after_response)
    # The same, on the clock every process of this machine shares.
    assert report.ns("endpoint returned") < client_had_response < report.ns(after_response)
    assert report.stats["succeeded"] == 3
    assert report.stats["discarded"] == 0
    assert report.stats["failed"] == 0


def test_streamed_response_hands_over_after_the_last_chunk(server: Server) -> None:
    ends = list(itertools.accumulate(len(chunk) for chunk in CHUNKS))
    acknowledged = 0
    received = b""
    client_had_everything = 0
    with server.client.stream("GET", "/stream") as response:
        for data in response.iter_raw():
            received += data
            # The app sends the next chunk (and, after the last, ends the body) only
            # once the client acknowledged the one before.
            while acknowledged < len(ends) and len(received) >= ends[acknowledged]:
                client_had_everything = time.monotonic_ns()
                server.ack(f"chunk-{acknowledged}")
                acknowledged += 1
    report = server.report()

    assert received == b"".join(CHUNKS)
    after_response = "after-response started; client had the whole response: True"
    assert report.sent == [
        "response started, 0 handed over",
        *["chunk sent"] * len(CHUNKS),
        "response complete (http.response.body), 0 handed over",
        after_response,
    ]
    assert client_had_everything < report.ns(after_response)
    # granian's final send returns at once (the "response complete" entry above);
    # it reports http.disconnect, if at all, only afterwards.
    assert "http.disconnect received during the final send" not in report.timeline
    assert report.stats["succeeded"] == 1
    assert report.stats["discarded"] == 0


def test_file_response_sent_with_pathsend(server: Server) -> None:
    """granian takes a ``FileResponse`` as one ``http.response.pathsend``: the final message."""
    response = server.client.get("/file", headers={HOLD: "file"})
    server.ack("file")
    report = server.report()

    assert response.status_code == 200
    assert response.content == APP_MODULE.read_bytes()
    assert report.sent == [
        "response started, 0 handed over",
        "response complete (http.response.pathsend), 0 handed over",
        "after-response started; client had the whole response: True",
    ]
    assert report.stats["succeeded"] == 1
    assert report.stats["discarded"] == 0


def test_file_response_through_base_http_middleware(server: Server) -> None:
    """A mounted app with a ``BaseHTTPMiddleware``: the pathsend message is passed on."""
    response = server.client.get("/wrapped/file", headers={HOLD: "wrapped file"})
    server.ack("wrapped file")
    report = server.report()

    assert response.headers["x-middleware"] == "saw it"
    assert response.content == APP_MODULE.read_bytes()
    assert report.sent == [
        "response started, 0 handed over",
        "response complete (http.response.pathsend), 0 handed over",
        "after-response started; client had the whole response: True",
    ]
    assert report.stats["succeeded"] == 1
    assert report.stats["discarded"] == 0


def test_endpoint_raising_http_exception(server: Server) -> None:
    """Only run_on_failure work of the later moments runs, after-response after the error."""
    response = server.client.get("/orders/7", headers={HOLD: "order"})
    server.ack("order")
    report = server.report()

    assert response.status_code == 404
    assert response.json() == {"detail": "no order 7"}
    assert "after-route ran" not in report.timeline
    assert "after-response ran" not in report.timeline
    assert "immediate ran" in report.timeline
    at = report.at
    assert "run_on_failure after-route ran" in report.timeline
    # Immediate and run_on_failure after-route work: handed over before the error response.
    complete = "response complete (http.response.body), 2 handed over"
    assert at("response started, 2 handed over") < at(complete)
    on_failure = "run_on_failure after-response started; client had the whole response: True"
    assert at(complete) < at(on_failure)
    assert report.stats["discarded"] == 2
    assert report.stats["succeeded"] == 3


def test_sync_endpoint_with_all_three_modes(server: Server) -> None:
    """A ``def`` endpoint runs in a worker thread; so does the ``def`` work it schedules."""
    response = server.client.post("/checkout-sync", headers={HOLD: "checkout"})
    client_had_response = time.monotonic_ns()
    server.ack("checkout")
    report = server.report()

    assert response.json()["immediate ran during the endpoint"] is True
    at = report.at
    assert at("endpoint started") < at("immediate started") < at("endpoint returned")
    assert at("endpoint returned") < at("after-route started")
    assert at("endpoint returned") < at("response started, 2 handed over")
    after_response = "after-response started; client had the whole response: True"
    assert at("response complete (http.response.body), 2 handed over") < at(after_response)
    # No order between after-route and after-response here: both were started in
    # order, but their functions run in worker threads, which the OS schedules.
    assert client_had_response < report.ns(after_response)
    assert report.stats["succeeded"] == 3
    assert report.stats["discarded"] == 0


def leave_mid_stream(server: Server, path: str) -> bytes:
    """GET ``path``, read up to its first chunk, then close the connection."""
    host, port = server.client.base_url.host, server.client.base_url.port
    assert port is not None
    received = b""
    with socket.create_connection((host, port), timeout=WAIT) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
        while b"first chunk" not in received:
            data = connection.recv(4096)
            assert data, f"connection closed early; received {received!r}"
            received += data
    # The client left before the end of the body; return once the app noticed.
    server.wait_for(f"returned:{path}")
    return received


def test_client_gone_mid_stream(server: Server) -> None:
    """After-response work is discarded; work already handed over runs on, uncancelled."""
    received = leave_mid_stream(server, "/feed")
    server.ack("finish")  # only now may the work handed over earlier finish
    report = server.report()

    assert received.startswith(b"HTTP/1.1 200")
    at = report.at
    assert "after-response ran" not in report.timeline
    assert at("app returned (/feed)") < at("immediate finished")
    assert at("app returned (/feed)") < at("after-route finished")
    assert at("app returned (/feed)") < at("run_on_failure after-response ran")
    assert report.stats["discarded"] == 1
    assert report.stats["succeeded"] == 3
    assert report.stats["cancelled"] == 0


def test_client_gone_after_work_was_scheduled_mid_stream(server: Server) -> None:
    """After-response work scheduled by the streaming body: discarded as well (SPEC 2.7)."""
    received = leave_mid_stream(server, "/feed-late")
    report = server.report()

    assert received.startswith(b"HTTP/1.1 200")
    assert report.sent == ["response started, 0 handed over", "chunk sent"]
    assert report.stats["discarded"] == 1
    assert report.stats["succeeded"] == 0


def test_graceful_shutdown_cancels_unshielded_and_finishes_shielded(server: Server) -> None:
    """SIGTERM: granian ends the app's lifespan, and the manager drains within it."""
    response = server.client.post("/imports")
    server.wait_for("unshielded started")
    server.wait_for("shielded started")

    exit_code = server.shut_down()
    report = server.shutdown_report()

    assert response.json() == {"status": "importing"}
    assert exit_code == 0
    timeline = [entry["what"] for entry in report["timeline"]]
    assert timeline.index("unshielded ended") < timeline.index("shielded work finished")
    assert timeline[-1] == "shielded work finished"
    assert report["stats"]["cancelled"] == 1
    assert report["stats"]["succeeded"] == 1
    assert report["running"] is False
    assert report["tasks left"] == 0


# -- when is a response delivered? ------------------------------------------------------


@contextmanager
def request_without_reading(server: Server, path: str) -> Generator[socket.socket, None, None]:
    """GET ``path`` and read the response's head only; close the connection on exit."""
    host, port = server.client.base_url.host, server.client.base_url.port
    assert port is not None
    with socket.create_connection((host, port), timeout=WAIT) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = connection.recv(1)  # not a byte of the body: the client stops reading
            assert data, f"connection closed early; received {head!r}"
            head += data
        assert head.startswith(b"HTTP/1.1 200")
        yield connection


def read_to_end(connection: socket.socket, up_to: int) -> int:
    """Read ``up_to`` bytes, or fewer if the server closes first; return how many came."""
    size = 0
    while size < up_to and (data := connection.recv(1 << 20)):  # the socket's timeout bounds it
        size += len(data)
    return size


def test_timeout_cancels_a_final_send_waiting_in_granians_queue(server: Server) -> None:
    """Cancelled before granian took the final message: not delivered.

    granian hands body messages to hyper through a queue of four, and hyper takes the
    next one only once it wrote the one before. With the big chunk unwritten (the client
    does not read) and four more queued, the final send waits for room in the queue
    until the timeout cancels it.
    """
    with request_without_reading(server, "/timed/stuck-final") as connection:
        server.wait_for("returned:/timed/stuck-final")
        report = server.report()
        # granian sends what it holds, then closes: the body is cut short.
        received = read_to_end(connection, BIG_CHUNK_SIZE + GRANIAN_QUEUE + len(b"end"))

    assert received == BIG_CHUNK_SIZE + GRANIAN_QUEUE
    at = report.at
    assert at("the timeout ran out") < at("final send cancelled, 1 handed over")
    assert not [what for what in report.timeline if what.startswith("http.disconnect")]
    assert "after-response ran" not in report.timeline
    assert {"after-route ran", "run_on_failure after-response ran"} <= set(report.timeline)
    assert report.stats["discarded"] == 1
    assert report.stats["succeeded"] == 2


def test_counts_a_final_message_it_took_as_sent(server: Server) -> None:
    """A response in one message: granian takes it whole, and the send returns at once.

    Delivered, whether or not the client ever reads it.
    """
    with request_without_reading(server, "/one-message") as connection:
        server.wait_for("returned:/one-message")
        report = server.report()  # not a byte of the body read yet
        received = read_to_end(connection, BIG_CHUNK_SIZE)

    assert received == BIG_CHUNK_SIZE
    assert "response complete (http.response.body), 1 handed over" in report.timeline
    assert_delivered(report)


def test_client_resets_during_the_final_send(server: Server) -> None:
    """granian logs the failed write at INFO and tells the app nothing: delivered."""
    with request_without_reading(server, "/stuck-final") as connection:
        server.wait_for("final send:/stuck-final")  # and it waits for room in the queue
        # Closing with a reset, as a client that crashed does.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.wait_for("returned:/stuck-final")
    report = server.report()
    exit_code = server.shut_down()

    assert exit_code == 0
    assert "ASGI transport error" in server.log.text
    # The final send returns once hyper dropped the body. Should granian report the
    # closed connection to Starlette's disconnect listener first, the listener would
    # cancel that send instead: delivered either way (never seen so far).
    assert "response complete (http.response.body), 1 handed over" in report.timeline or (
        report.at("http.disconnect received during the final send")
        < report.at("final send cancelled, 1 handed over")
    )
    assert not [what for what in report.timeline if what.startswith("final send raised")]
    assert_delivered(report)


def assert_delivered(report: Report) -> None:
    assert {"after-route ran", "after-response ran", "run_on_failure after-response ran"} <= (
        set(report.timeline)
    )
    assert report.stats["discarded"] == 0
    assert report.stats["succeeded"] == 3
