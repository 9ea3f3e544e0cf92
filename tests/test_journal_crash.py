"""The journal against real crashes: uvicorn processes killed with SIGKILL, or stopped.

``examples/durable.py`` serves orders; each order schedules three durable receipts
(immediate, after-route, after-response) that take a while to "send" and then append
a line to an outbox file. Clients count the orders they got a 200 for. Whatever
happens to the server, every receipt of every acknowledged order must reach the
outbox once a server runs again: the immediate and after-route ones because their
rows were committed before the response started, the after-response ones unless
the kill fell in their documented window of milliseconds.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from .reliability.servers import ROOT, Server, serve

APP = "examples.durable:app"
WAIT = 60.0
"""Seconds any single wait may take before the test fails."""


def _post_order(port: int, order: int) -> int:
    body = json.dumps({"id": order, "email": f"c{order}@example.com", "total": "9.99"})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST", "/orders", body=body, headers={"content-type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class Load:
    """Clients in threads placing orders until stopped; the orders they got 200 for."""

    def __init__(self, port: int, clients: int, first: int) -> None:
        self.acknowledged: set[int] = set()
        self.refused = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = first
        self._threads = [
            threading.Thread(target=self._run, args=(port,), daemon=True) for _ in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self, port: int) -> None:
        while not self._stop.is_set():
            order = self._take()
            try:
                status = _post_order(port, order)
            except (OSError, http.client.HTTPException):  # the server was killed mid-request
                status = 0
            with self._lock:
                if status == 200:
                    self.acknowledged.add(order)
                else:
                    self.refused += 1

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} orders answered"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)


def _outbox(path: Path) -> Counter[tuple[str, int]]:
    if not path.exists():
        return Counter()
    lines = path.read_text().splitlines()
    return Counter((line.split()[0], int(line.split()[1])) for line in lines)


def _wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _rows(journal: Path, where: str = "1") -> int:
    conn = sqlite3.connect(journal)
    try:
        row = conn.execute(f"SELECT count(*) FROM fastapi_tasks_journal WHERE {where}").fetchone()
    finally:
        conn.close()
    return int(row[0])


def _unfinished(journal: Path) -> int:
    return _rows(journal, "state = 'pending'")


@contextmanager
def _server(
    tmp_path: Path, name: str, kind: str = "uvicorn", **env: str
) -> Generator[Server, None, None]:
    settings = {
        "DURABLE_JOURNAL": str(tmp_path / "tasks.db"),
        "DURABLE_OUTBOX": str(tmp_path / "outbox.txt"),
        **env,
    }
    with serve(kind, APP, tmp_path / f"{name}.log", settings) as server:
        yield server


@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn-trio"])
def test_sigkill_under_load_loses_no_acknowledged_work(tmp_path: Path, kind: str) -> None:
    journal, outbox = tmp_path / "tasks.db", tmp_path / "outbox.txt"
    with _server(tmp_path, "first", kind, DURABLE_SEND_SECONDS="0.5") as first:
        load = Load(first.port, clients=8, first=0)
        try:
            load.wait_for(120)
            first.stop(signal.SIGKILL)
        finally:
            load.stop()
    acknowledged = set(load.acknowledged)
    assert first.exit is not None
    assert first.exit.returncode == -signal.SIGKILL
    interrupted = _unfinished(journal)
    assert interrupted > 0, "the kill found no durable work in flight: the test proves nothing"
    before = _outbox(outbox)

    with _server(tmp_path, "second", kind, DURABLE_SEND_SECONDS="0") as second:

        def all_sent() -> bool:
            sent = _outbox(outbox)
            return all(
                ("receipt", order) in sent and ("invoice", order) in sent for order in acknowledged
            )

        _wait_until(all_sent, "the receipts of every acknowledged order")
        _wait_until(lambda: _unfinished(journal) == 0, "the journal to drain")
        assert "cannot run again" not in second.output()
    sent = _outbox(outbox)
    surveys = sum(1 for order in acknowledged if ("survey", order) in sent)
    print(
        f"acknowledged {len(acknowledged)} orders ({load.refused} refused or cut off); "
        f"{interrupted} durable tasks unfinished at the kill; {sum(sent.values())} sent in "
        f"all, {sum(sent.values()) - sum(before.values())} after the restart; after-response "
        f"receipts of acknowledged orders: {surveys}/{len(acknowledged)}"
    )
    # At least once, not at most: the only repeats are the ones the kill interrupted.
    assert sum(sent.values()) - len(set(sent)) <= interrupted


def test_a_live_worker_takes_over_the_rows_of_a_killed_one(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.txt"
    with ExitStack() as stack:
        # The first worker takes long to send; the second one is quick.
        slow = stack.enter_context(
            _server(tmp_path, "slow", DURABLE_SEND_SECONDS="30", DURABLE_LEASE="2")
        )
        quick = stack.enter_context(
            _server(tmp_path, "quick", DURABLE_SEND_SECONDS="0", DURABLE_LEASE="2")
        )
        orders = range(1, 21)
        for order in orders:
            assert _post_order(slow.port, order) == 200
        # After-response receipts are recorded just after their response: let them land.
        _wait_until(lambda: _rows(tmp_path / "tasks.db") == 60, "every receipt's row")
        assert _outbox(outbox) == Counter()
        slow.stop(signal.SIGKILL)

        def taken_over() -> bool:
            sent = _outbox(outbox)
            return all(
                (kind, order) in sent
                for order in orders
                for kind in ("receipt", "invoice", "survey")
            )

        _wait_until(taken_over, "the quick worker to send the killed worker's receipts")
        sent = _outbox(outbox)
        assert set(sent.values()) == {1}
        assert all(f"pid={quick.process.pid}" in line for line in outbox.read_text().splitlines())


def test_a_stalled_worker_stops_the_work_another_took_over(tmp_path: Path) -> None:
    """SIGSTOP past the lease: the other worker runs the rows, the stalled one gives them up."""
    outbox = tmp_path / "outbox.txt"
    with ExitStack() as stack:
        stalled = stack.enter_context(
            _server(tmp_path, "stalled", DURABLE_SEND_SECONDS="3", DURABLE_LEASE="1")
        )
        other = stack.enter_context(
            _server(tmp_path, "other", DURABLE_SEND_SECONDS="0", DURABLE_LEASE="1")
        )
        for order in range(1, 6):
            assert _post_order(stalled.port, order) == 200
        _wait_until(lambda: _rows(tmp_path / "tasks.db") == 15, "every receipt's row")
        os.kill(stalled.process.pid, signal.SIGSTOP)
        try:
            _wait_until(
                lambda: len(_outbox(outbox)) == 15, "the other worker to take the rows over"
            )
        finally:
            os.kill(stalled.process.pid, signal.SIGCONT)
        # The stalled worker renews within a quarter lease, finds its rows gone and
        # stops them before their 3 s of "sending" are over.
        _wait_until(
            lambda: "took over 15 of its durable task(s)" in stalled.output(),
            "the stalled worker to notice",
        )
        assert stalled.alive()
        assert set(_outbox(outbox).values()) == {1}
        assert f"pid={other.process.pid}" in outbox.read_text()


@pytest.mark.parametrize("damage", ["corrupt", "locked"])
def test_a_damaged_journal_stops_the_server_at_startup_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    journal = tmp_path / "tasks.db"
    holder: sqlite3.Connection | None = None
    if damage == "corrupt":
        journal.write_bytes(b"not a database, whatever it once was\n" * 64)
        before = journal.read_bytes()
    else:
        holder = sqlite3.connect(journal, isolation_level=None)
        holder.execute("CREATE TABLE other (x)")
        # Read before locking: closing any descriptor of the file in this process
        # would drop the lock (POSIX advisory locks belong to the process).
        before = journal.read_bytes()
        holder.execute("BEGIN EXCLUSIVE")
    env = {key: value for key, value in os.environ.items() if key != "COVERAGE_PROCESS_START"}
    env.update(DURABLE_JOURNAL=str(journal), DURABLE_OUTBOX=str(tmp_path / "outbox.txt"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    assert result.returncode != 0
    assert f"cannot open the task journal {journal}" in result.stderr
    assert ("locked by another process" in result.stderr) == (damage == "locked")
    assert journal.read_bytes() == before
