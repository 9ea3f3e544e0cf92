"""SPEC sections 13 and 14: the monitor shows the journal's history, across restarts and processes.

Every test runs real apps on a real SQLite file under ``tmp_path``; a restart is a new
app on the same file, another process a real ``python`` running an app on it. The
durable functions are module-level: the journal finds them again by name.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.types import Message

import fastapi_tasks.monitor._journal as journal_module
from fastapi_tasks import TaskManager, Tasks, add_tasks
from fastapi_tasks.errors import FastAPITasksJournalError
from fastapi_tasks.journal._rows import JournalRow, count_by_state
from fastapi_tasks.monitor import monitor_router
from fastapi_tasks.monitor._journal import JournalView
from fastapi_tasks.testing import run_lifespan

from .conftest import http_scope

pytestmark = pytest.mark.anyio

WAIT = 10.0
ROOT = Path(__file__).resolve().parent.parent
LOCAL = ("127.0.0.1", 5000)


async def send_receipt(order: int) -> None:
    pass


async def charge_card(order: int) -> None:
    raise ValueError(f"card declined for order {order}")


def monitored(journal: Path | None, **options: Any) -> tuple[FastAPI, TaskManager]:
    app = FastAPI()
    manager = add_tasks(app, journal=journal)
    app.include_router(monitor_router(**options), prefix="/tasks")

    @app.post("/orders/{order}")
    async def orders(order: int, tasks: Tasks) -> dict[str, int]:
        tasks.task(durable=True, name="send receipt").schedule(send_receipt, order)
        tasks.after_response.task(durable=True, name="charge card").schedule(charge_card, order)
        return {"order": order}

    return app, manager


@asynccontextmanager
async def client_for(
    app: FastAPI, client: tuple[str, int] = LOCAL
) -> AsyncGenerator[httpx2.AsyncClient, None]:
    async with run_lifespan(app):
        transport = httpx2.ASGITransport(app=app, client=client)
        http = httpx2.AsyncClient(transport=transport, base_url="http://test")
        async with http:  # pyright cannot type what __aenter__ returns
            yield http


class CountedReads:
    """Counts the monitor's reads of journal files (each read counts the rows by state)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0

        def counted(path: str) -> dict[str, int]:
            self.reads += 1
            return count_by_state(path)

        monkeypatch.setattr(journal_module, "count_by_state", counted)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> CountedReads:
    return CountedReads(monkeypatch)


async def run_orders(journal: Path, *orders: int) -> None:
    """One life of an app on ``journal``: each order schedules a receipt and a failing charge."""
    app, manager = monitored(journal)
    async with client_for(app) as http:
        for order in orders:
            assert (await http.post(f"/orders/{order}")).status_code == 200
        with anyio.fail_after(WAIT):
            await manager.join()


# -- history across restarts and processes --------------------------------------------------


async def test_history_survives_a_restart(tmp_path: Path, reads: CountedReads) -> None:
    journal = tmp_path / "tasks.db"
    await run_orders(journal, 7)
    assert reads.reads == 0  # nobody looked: the file was never read for the monitor

    app, _ = monitored(journal)  # a new app, a new process's worth of state
    async with client_for(app) as http:
        section = (await http.get("/tasks/api/journal")).json()["journal"]
        snapshot = (await http.get("/tasks/api/snapshot")).json()

    assert section["error"] is None
    assert section["path"] == str(journal)
    assert section["counts"] == {"pending": 0, "succeeded": 1, "failed": 1, "cancelled": 0}
    assert section["limit"] == 1000
    rows = {row["name"]: row for row in section["finished"]}
    assert set(rows) == {"send receipt", "charge card"}
    receipt, charge = rows["send receipt"], rows["charge card"]
    assert (receipt["state"], receipt["mode"], receipt["attempts"]) == ("succeeded", "immediate", 1)
    assert (charge["state"], charge["mode"]) == ("failed", "after_response")
    assert receipt["request"] == charge["request"] == "POST /orders/7"
    assert receipt["func"] == f"{__name__}:send_receipt"
    assert receipt["error"] is None
    assert charge["error"] == "ValueError: card declined for order 7"
    assert charge["process"] == f"{os.uname().nodename}:{os.getpid()}"
    assert charge["owner"].startswith(charge["process"] + ":")
    assert charge["this_process"] is True
    assert charge["scheduled"] <= charge["started"] <= charge["finished"]
    assert "arguments" not in receipt
    [failure] = section["failures"]
    assert failure["id"] == charge["id"]
    assert failure["traceback"].startswith("Traceback (most recent call last)")
    assert "in charge_card" in failure["traceback"]
    assert "traceback" not in receipt  # the list of rows carries the last line only
    # The snapshot carries the same read: one read per interval, whoever asks.
    assert snapshot["journal"] == section
    assert reads.reads == 1


async def test_rows_written_by_another_process_appear(tmp_path: Path) -> None:
    journal = tmp_path / "tasks.db"
    script = (
        "import sys, anyio\n"
        "from fastapi import FastAPI\n"
        "from fastapi_tasks import add_tasks\n"
        "from fastapi_tasks.testing import run_lifespan\n"
        "from tests.test_monitor_journal import charge_card\n"
        "async def main():\n"
        "    app = FastAPI()\n"
        "    manager = add_tasks(app, journal=sys.argv[1])\n"
        "    async with run_lifespan(app):\n"
        "        manager.task(durable=True, name='nightly charge').schedule(charge_card, 99)\n"
        "        await manager.join(10)\n"
        "anyio.run(main)\n"
    )
    app, _ = monitored(journal)
    async with client_for(app) as http:  # this app holds its lease while the other runs
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-c", script, str(journal)], cwd=ROOT, env=env, check=False
            )
        assert done.returncode == 0, done.stderr.decode()
        section = (await http.get("/tasks/api/journal")).json()["journal"]

    [other] = section["finished"]
    assert other["name"] == "nightly charge"
    assert other["this_process"] is False
    assert other["process"] != f"{os.uname().nodename}:{os.getpid()}"
    assert other["request"] is None
    assert [failure["name"] for failure in section["failures"]] == ["nightly charge"]
    assert "card declined for order 99" in section["failures"][0]["traceback"]


async def test_rows_are_newest_first_and_bounded_by_history(tmp_path: Path) -> None:
    journal = tmp_path / "tasks.db"
    await run_orders(journal, 1, 2, 3)
    app, _ = monitored(journal, history=3)
    async with client_for(app) as http:
        section = (await http.get("/tasks/api/journal")).json()["journal"]
    assert section["counts"]["succeeded"] == section["counts"]["failed"] == 3
    assert section["limit"] == 3
    finished = [row["finished"] for row in section["finished"]]
    assert len(finished) == 3
    assert finished == sorted(finished, reverse=True)
    assert len(section["failures"]) == 3  # failures have a bound of their own
    assert [row["request"] for row in section["failures"]] == [
        "POST /orders/3",
        "POST /orders/2",
        "POST /orders/1",
    ]


async def test_arguments_only_with_show_arguments(tmp_path: Path) -> None:
    journal = tmp_path / "tasks.db"
    await run_orders(journal, 4242)
    hidden, _ = monitored(journal)
    async with client_for(hidden) as http:
        text = (await http.get("/tasks/api/snapshot")).text
    assert "4242]" not in text
    assert '"arguments"' not in text
    shown, _ = monitored(journal, show_arguments=True)
    async with client_for(shown) as http:
        section = (await http.get("/tasks/api/journal")).json()["journal"]
    assert all("4242" in row["arguments"] for row in section["finished"])
    assert "4242" in section["failures"][0]["arguments"]


# -- reads: throttled, off the loop, never a failure of the page ----------------------------


async def test_reads_are_throttled_however_many_clients_ask(
    tmp_path: Path, reads: CountedReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "INTERVAL", 3600.0)  # a window no test outlives
    journal = tmp_path / "tasks.db"
    app, manager = monitored(journal)
    answers: list[dict[str, Any]] = []
    async with client_for(app) as http:

        async def ask(path: str) -> None:
            response = await http.get(path)
            answers.append(response.json()["journal"])

        async with anyio.create_task_group() as group:  # all at once: one read for all
            for path in ["/tasks/api/journal", "/tasks/api/snapshot"] * 4:
                group.start_soon(ask, path)
        assert reads.reads == 1
        manager.task(durable=True).schedule(send_receipt, 5)
        with anyio.fail_after(WAIT):
            await manager.join()
        cached = (await http.get("/tasks/api/journal")).json()["journal"]
        assert reads.reads == 1  # within the window: the same read, not the new row
        monkeypatch.setattr(journal_module, "INTERVAL", 0.0)
        fresh = (await http.get("/tasks/api/journal")).json()["journal"]
        assert reads.reads == 2
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["counts"]["succeeded"] == 0
    assert cached["read_at"] == answers[0]["read_at"]
    assert fresh["read_at"] > cached["read_at"]
    # The new row, finished or about to be: its end is committed in the writer's next batch.
    assert fresh["counts"]["pending"] + fresh["counts"]["succeeded"] == 1


async def test_callers_that_arrive_during_a_read_share_it(
    tmp_path: Path, reads: CountedReads
) -> None:
    journal = tmp_path / "tasks.db"
    await run_orders(journal, 1)
    view = JournalView(str(journal), 10, False)
    sections: list[dict[str, Any]] = []

    async def ask() -> None:
        sections.append(await view.section())

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(ask)
    assert reads.reads == view.reads == 1
    assert all(section is sections[0] for section in sections)


async def test_a_read_error_is_a_field_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: str) -> dict[str, int]:
        raise FastAPITasksJournalError(f"cannot read the task journal {path}: disk I/O error")

    monkeypatch.setattr(journal_module, "count_by_state", broken)
    journal = tmp_path / "tasks.db"
    app, _ = monitored(journal)
    async with client_for(app) as http:
        snapshot = await http.get("/tasks/api/snapshot")
    assert snapshot.status_code == 200
    section = snapshot.json()["journal"]
    assert section["error"] == f"cannot read the task journal {journal}: disk I/O error"
    assert (section["counts"], section["finished"], section["failures"]) == (None, [], [])
    assert snapshot.json()["summary"]["counts"]["failed"] == 0  # the rest of the page is there


async def test_a_missing_file_and_an_unnamed_error_are_shown_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = JournalView(str(tmp_path / "gone.db"), 10, False)
    section = await view.section()
    assert section["error"] == f"no task journal at {tmp_path / 'gone.db'}: the file does not exist"

    def silent(path: str) -> dict[str, int]:
        raise OSError

    monkeypatch.setattr(journal_module, "count_by_state", silent)
    monkeypatch.setattr(journal_module, "INTERVAL", 0.0)
    assert (await view.section())["error"] == "OSError"
    assert view.reads == 2
    assert view.version == 2


async def test_an_unchanged_journal_keeps_its_version(tmp_path: Path) -> None:
    journal = tmp_path / "tasks.db"
    await run_orders(journal, 1)
    view = JournalView(str(journal), 10, False)
    first = await view.section()
    assert view.version == 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(journal_module, "INTERVAL", 0.0)
        again = await view.section()
    assert view.reads == 2
    assert view.version == 1  # read again, nothing changed
    assert again is not first
    assert again["finished"] == first["finished"]


def test_long_tracebacks_are_cut_from_their_start() -> None:
    long = "Traceback (most recent call last):\n" + "x" * 9000 + "\nValueError: " + "y" * 600
    row = JournalRow(
        "1", "m:f", "f", "immediate", "[]", "{}", "failed", 1, None, 1.0, 1.0, 2.0, long, None
    )
    failure = JournalView("x.db", 1, False)._failure(row)  # pyright: ignore[reportPrivateUsage]
    assert failure["traceback"].startswith("\N{HORIZONTAL ELLIPSIS}")
    assert len(failure["traceback"]) == journal_module.TRACEBACK_CHARS + 1
    assert failure["error"].startswith("ValueError: yyy")
    assert len(failure["error"]) == journal_module.TEXT_CHARS
    assert failure["process"] is None
    assert failure["this_process"] is False
    assert journal_module._last_line("  \n") is None  # pyright: ignore[reportPrivateUsage]


# -- the live stream --------------------------------------------------------------------------


async def test_the_stream_sends_the_journal_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "INTERVAL", 0.0)  # a read per message: changes show
    journal = tmp_path / "tasks.db"
    app, manager = monitored(journal)
    chunks: list[bytes] = []
    seen = anyio.Event()
    scheduled: list[object] = []

    def events() -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        for block in b"".join(chunks).decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in fields:
                found.append((fields["event"], json.loads(fields["data"])))
        return found

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            journals = [data for kind, data in events() if kind == "journal"]
            if journals and not scheduled:
                scheduled.append(manager.task(durable=True, name="later").schedule(send_receipt, 3))
            if not any(journal["journal"]["finished"] for journal in journals):
                return
            after = [kind for kind, _ in events()][-3:]
            if after == ["journal", "snapshot", "snapshot"]:
                seen.set()  # two messages without a journal: it was read and had not changed
            elif after[-1] != "snapshot" or after[-2] != "snapshot":
                manager.schedule(send_receipt, 0)  # not durable: moves the snapshot only

    async def receive() -> Message:
        await seen.wait()
        return {"type": "http.disconnect"}

    async with run_lifespan(app):
        with anyio.fail_after(WAIT):
            await app(http_scope("/tasks/api/stream"), receive, send)
        await manager.join(5)
    found = events()
    kinds = [kind for kind, _ in found]
    assert kinds[0] == "snapshot"
    assert "journal" not in found[0][1]  # snapshots stay small: the journal comes apart
    journals = [data["journal"] for kind, data in found if kind == "journal"]
    assert journals[0]["counts"] == {"pending": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert [row["name"] for row in journals[-1]["finished"]] == ["later"]
    # Read at every message, sent only when it changed (pending, then finished).
    assert 2 <= len(journals) <= 3
    assert all(one["counts"] != two["counts"] for one, two in itertools.pairwise(journals))


# -- the guard, and apps without a journal -------------------------------------------------


async def test_a_stranger_sees_no_journal(tmp_path: Path, reads: CountedReads) -> None:
    journal = tmp_path / "tasks.db"
    await run_orders(journal, 1)
    app, _ = monitored(journal)
    async with client_for(app, ("203.0.113.9", 4000)) as stranger:
        for path in ("/tasks/api/journal", "/tasks/api/snapshot", "/tasks/api/stream"):
            response = await stranger.get(path)
            assert response.status_code == 403
            assert "charge" not in response.text
    async with client_for(app) as local:
        proxied = await local.get("/tasks/api/journal", headers={"X-Forwarded-For": "1.2.3.4"})
    assert proxied.status_code == 403
    assert reads.reads == 0  # refused before anything was read


def only_with_the_key(request: Request) -> None:
    if request.headers.get("x-key") != "k-1":
        raise HTTPException(401)


async def test_a_guard_decides_for_the_journal_too(tmp_path: Path) -> None:
    journal = tmp_path / "tasks.db"
    await run_orders(journal, 1)
    app, _ = monitored(journal, dependencies=[Depends(only_with_the_key)])
    async with client_for(app, ("203.0.113.9", 4000)) as remote:
        refused = await remote.get("/tasks/api/journal")
        allowed = await remote.get("/tasks/api/journal", headers={"x-key": "k-1"})
    assert refused.status_code == 401
    assert "charge" not in refused.text
    assert allowed.json()["journal"]["counts"]["failed"] == 1


async def test_without_a_journal_there_is_no_section(reads: CountedReads) -> None:
    app, manager = monitored(None)
    async with client_for(app) as http:
        manager.schedule(send_receipt, 1)
        with anyio.fail_after(WAIT):
            await manager.join()
        snapshot = (await http.get("/tasks/api/snapshot")).json()
        missing = await http.get("/tasks/api/journal")
    assert "journal" not in snapshot
    assert snapshot["summary"]["counts"]["succeeded"] == 1
    assert missing.status_code == 404
    assert "no journal" in missing.json()["detail"]
    assert reads.reads == 0
