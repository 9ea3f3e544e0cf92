"""Faults on real servers (uvicorn on asyncio, hypercorn's trio worker).

One server per backend takes every fault of ``app.FAULTS`` in turn: tasks raising every
kind of ``Exception`` (groups and ones whose ``repr`` raises included), ``on_error``
handlers that raise, work that cancels itself, joins its own manager, fans out into
thousands of tasks or blocks in its thread past its timeout, endpoints and dependency
teardowns that raise, clients that reset the connection mid-request and mid-stream.
After each: the server still answers ``/health``, the work ended as it must, and the
counters add up over that fault. Then the server must shut down cleanly.

``BaseException``s, work that never ends and threads that never return get a fresh
server each: on 0.2.0 they stop the server or hold its exit.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .app import (
    BASE_EXCEPTION_FAULTS,
    FAULTS,
    HANG_SHIELDED_SECONDS,
    HANG_TASKS,
    Fault,
)
from .harness import forbidden_lines, record, stopped_line
from .servers import SERVERS, TASKS_APP, Exit, Server, serve

pytestmark = pytest.mark.reliability

JOIN_SECONDS = 20
EXIT_SECONDS = 5.0
"""Longest a server may take to exit after SIGTERM once its work is cut (grace 0)."""
FINAL_STATES = ("succeeded", "failed", "cancelled", "discarded")


@dataclass
class FaultResult:
    status: int | None
    """The triggering request's status (``None``: the client reset the connection)."""
    alive: bool
    joined: bool
    before: dict[str, Any]
    after: dict[str, Any]

    def delta(self, key: str) -> int:
        if key in FINAL_STATES or key == "scheduled":
            return int(self.after["stats"][key] - self.before["stats"][key])
        if key == "recorded":
            return int(self.after["recorded"] - self.before["recorded"])
        return int(sum(self.after["handled"].values()) - sum(self.before["handled"].values()))


def reset(sock: socket.socket) -> None:
    """Close with an RST, as a client that crashed or lost its network would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def request_then_reset(server: Server, fault: Fault) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(f"GET {fault.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        if fault.client == "disconnect-request":
            server.get("/fault/entered")  # the endpoint has scheduled its work
        else:
            received = b""
            while len(received) < 3 * 1024 + 100:  # headers and the first three chunks
                chunk = sock.recv(65536)
                assert chunk, "the server closed the stream early"
                received += chunk
    finally:
        reset(sock)


def snapshot(server: Server) -> tuple[dict[str, Any], bool]:
    status, report = server.get(f"/stats?join={JOIN_SECONDS}", timeout=JOIN_SECONDS + 10)
    if status == 200:
        return report, True
    _, report = server.get("/stats")  # the join timed out: what is still live shows
    return report, False


def trigger(server: Server, fault: Fault) -> FaultResult:
    before, _ = snapshot(server)
    status: int | None = None
    if fault.client == "get":
        status, _ = server.get(fault.path)
    else:
        request_then_reset(server, fault)
    try:
        after, joined = snapshot(server)
    except OSError:
        return FaultResult(status, alive=False, joined=False, before=before, after=before)
    return FaultResult(status, server.alive(), joined, before, after)


def run_faults(
    server: Server, faults: dict[str, Fault]
) -> Generator[tuple[str, FaultResult | None], None, None]:
    """Trigger each fault in turn; ``None`` for those left once the server died."""
    dead = False
    for name, fault in faults.items():
        if dead:
            yield name, None
            continue
        try:
            result = trigger(server, fault)
        except OSError:
            result = None
        dead = result is None or not result.alive
        yield name, result


@dataclass
class FaultRun:
    kind: str
    results: dict[str, FaultResult | None]
    exit: Exit
    output: str


@pytest.fixture(scope="module", params=SERVERS)
def fault_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FaultRun:
    kind = str(request.param)
    log = tmp_path_factory.mktemp(f"faults-{kind}") / "server.log"
    with serve(kind, TASKS_APP, log) as server:
        results = dict(run_faults(server, FAULTS))
        if server.alive():
            server.get("/fault/release")  # the thread blocked past its timeout returns
        stopped = server.stop(signal.SIGTERM)
    return FaultRun(kind, results, stopped, server.output())


def check_outcome(fault: Fault, result: FaultResult | None, output: str) -> None:
    assert result is not None, f"the server had stopped before:\n{output[-3000:]}"
    assert result.alive, f"the server stopped:\n{output[-3000:]}"
    assert result.joined, f"work still live after {JOIN_SECONDS}s: {result.after['stats']}"
    stats = result.after["stats"]
    assert stats["pending"] == stats["running"] == 0
    ended = {state: result.delta(state) for state in FINAL_STATES}
    assert sum(ended.values()) == fault.tasks, f"every task ends exactly once: {ended}"
    if fault.outcome is not None:
        expected = fault.outcome
        assert ended == {
            "succeeded": expected.succeeded,
            "failed": expected.failed,
            "cancelled": expected.cancelled,
            "discarded": expected.discarded,
        }
        assert result.delta("handled") == expected.handled
    assert result.delta("recorded") == ended["succeeded"], "the work's own record of its runs"


def check_stats_add_up(fault: Fault, result: FaultResult | None) -> None:
    """SPEC section 7's identity, over the fault: what it scheduled is what ended."""
    assert result is not None
    assert result.joined
    stats = result.after["stats"]
    assert stats["pending"] == stats["running"] == 0
    ended = sum(result.delta(state) for state in FINAL_STATES)
    assert result.delta("scheduled") == ended == fault.tasks


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_survived_and_accounted_for(fault_run: FaultRun, name: str) -> None:
    result = fault_run.results[name]
    if result is not None and FAULTS[name].outcome is None:  # the server decides the split
        split = {state: result.delta(state) for state in FINAL_STATES}
        record("fault-split", server=fault_run.kind, fault=name, **split)
    check_outcome(FAULTS[name], result, fault_run.output)


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_stats_add_up(fault_run: FaultRun, name: str) -> None:
    check_stats_add_up(FAULTS[name], fault_run.results[name])


def test_faults_then_clean_shutdown(fault_run: FaultRun) -> None:
    output = fault_run.output
    assert fault_run.exit.returncode in (0, -15), output[-3000:]
    assert fault_run.exit.seconds <= EXIT_SECONDS, output[-3000:]
    # Failing work logs its traceback on purpose; lost work and unformattable records never.
    assert forbidden_lines(output, tracebacks=False) == []
    assert stopped_line(output) is not None
    survived = sum(result is not None and result.alive for result in fault_run.results.values())
    record(
        "faults",
        server=fault_run.kind,
        faults=len(FAULTS),
        survived=survived,
        exit_seconds=fault_run.exit.seconds,
    )


# -- BaseExceptions: a fresh server per group ----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "group"), [(kind, group) for kind in SERVERS for group in BASE_EXCEPTION_FAULTS]
)
def test_base_exceptions_from_work_are_failures(kind: str, group: str, tmp_path: Path) -> None:
    """SystemExit, KeyboardInterrupt, GeneratorExit, custom BaseExceptions and groups of
    them, from async work, sync work and ``on_error``: logged, counted as failed, and the
    server goes on (SPEC section 7: ``BackgroundTasks`` survives ``sys.exit()`` in a task)."""
    faults = BASE_EXCEPTION_FAULTS[group]
    with serve(kind, TASKS_APP, tmp_path / "server.log") as server:
        results = dict(run_faults(server, faults))
        stopped = server.stop(signal.SIGTERM)
    output = server.output()
    for name, fault in faults.items():
        check_outcome(fault, results[name], output)
        check_stats_add_up(fault, results[name])
    assert stopped.returncode in (0, -15), output[-3000:]
    assert forbidden_lines(output, tracebacks=False) == []


# -- work that holds shutdown --------------------------------------------------------------


@pytest.mark.parametrize("kind", SERVERS)
def test_work_that_never_ends_is_cut_at_shutdown(kind: str, tmp_path: Path) -> None:
    """Work sleeping forever, an ``on_error`` handler that hangs, a task joining its own
    manager: shutdown cuts them (grace 0); shielded work still runs to its end."""
    events = tmp_path / "events"
    with serve(
        kind, TASKS_APP, tmp_path / "server.log", {"RELIABILITY_EVENTS": str(events)}
    ) as server:
        status, _ = server.get("/fault/hang")
        stopped = server.stop(signal.SIGTERM)
    output = server.output()
    assert status == 200
    assert stopped.returncode in (0, -15), output[-3000:]
    assert stopped.seconds <= EXIT_SECONDS + HANG_SHIELDED_SECONDS, output[-3000:]
    assert forbidden_lines(output, tracebacks=False) == []
    lines = events.read_text(encoding="ascii").splitlines()
    assert "E 0" in lines, "the shielded work ran to its end"
    stats_line = next(line for line in lines if line.startswith("STATS "))
    stats = json.loads(stats_line.removeprefix("STATS "))
    assert stats["pending"] == stats["running"] == 0
    assert stats["scheduled"] == HANG_TASKS
    assert sum(stats[state] for state in FINAL_STATES) == HANG_TASKS
    line = stopped_line(output)
    assert line is not None
    # The sleeper and the hanging handler are always live at shutdown: cut there, and counted.
    assert line["cancelled"] + line["failed"] >= 2


ABANDONED_EXIT_SECONDS = 3.0
"""Nothing runs but the blocked thread: the exit is quick, or never (it blocks 60 s)."""


@pytest.mark.parametrize(
    ("kind", "sig"),
    [
        # uvicorn re-raises SIGTERM with its default action once it is done: the process
        # ends without joining threads, which hides the bug.
        pytest.param("uvicorn", signal.SIGTERM),
        pytest.param("uvicorn", signal.SIGINT),
        pytest.param("hypercorn-trio", signal.SIGTERM),
    ],
)
def test_abandoned_thread_does_not_hold_exit(kind: str, sig: int, tmp_path: Path) -> None:
    """A sync task blocked in its thread past its timeout is abandoned: the process still
    exits (SPEC section 6)."""
    with serve(kind, TASKS_APP, tmp_path / "server.log") as server:
        status, report = server.get(f"/stats?join={JOIN_SECONDS}")
        assert status == 200
        server.get("/fault/abandon-thread")
        status, report = server.get(f"/stats?join={JOIN_SECONDS}")
        assert status == 200
        assert report["stats"]["failed"] == 1  # the timeout
        stopped = server.stop(sig, deadline=ABANDONED_EXIT_SECONDS)
    assert stopped.returncode is not None, "the process did not exit"
    assert stopped.seconds <= ABANDONED_EXIT_SECONDS
