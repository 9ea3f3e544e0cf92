# pyright: reportPrivateUsage=false
"""The journal in process, on asyncio and trio: what is recorded when, restarts, failures.

Every test runs a real app with a real SQLite file under ``tmp_path``; a "restart" is
a second lifespan of a new app on the same file. Durable functions are module-level
(the journal finds them again by name); what they did goes to ``RAN``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient

from fastapi_tasks import (
    FastAPITasksJournalError,
    Task,
    TaskConfig,
    TaskEvent,
    TaskManager,
    Tasks,
    TaskState,
    add_tasks,
)
from fastapi_tasks.journal import SQLiteJournal

from .conftest import serving

pytestmark = pytest.mark.anyio

WAIT = 10.0

RAN: list[Any] = []
"""What durable functions of this module did, in order."""
GATES: dict[str, anyio.Event] = {}
"""Events durable functions wait on, by name (made per test, on its loop)."""
SIGNALS: dict[str, anyio.Event] = {}
"""Events durable functions set when they get somewhere ("a started"), if the test made one."""


@pytest.fixture(autouse=True)
def _clean() -> None:
    RAN.clear()
    GATES.clear()
    SIGNALS.clear()


def reached(point: str) -> None:
    event = SIGNALS.get(point)
    if event is not None:
        event.set()


async def until(point: str) -> None:
    """Wait (bounded) for a durable function to reach ``point``; make the event first."""
    with anyio.fail_after(WAIT):
        await SIGNALS[point].wait()


async def note(value: int) -> None:
    RAN.append(value)
    reached(f"note {value}")


def note_sync(value: int) -> None:
    RAN.append(("sync", value))


async def block(name: str) -> None:
    RAN.append(("started", name))
    reached(f"{name} started")
    await GATES[name].wait()
    RAN.append(("done", name))


async def fail(value: int) -> None:
    RAN.append(("failed", value))
    raise RuntimeError(f"boom {value}")


async def fail_then_block(name: str) -> None:
    """Fails the first time, then blocks on its gate: a run cut short by shutdown."""
    if ("failed", name) not in RAN:
        RAN.append(("failed", name))
        reached(f"{name} failed")
        raise RuntimeError("not yet")
    await block(name)


def on_error(task: Task[Any], exc: BaseException) -> None:
    RAN.append(("on_error", task.name, type(exc).__name__))


class Transient(Exception):
    pass


@dataclass
class Point:
    x: int
    y: int


async def move(point: Point) -> None:
    RAN.append(point)


def rows(path: Path, where: str = "1") -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        found = conn.execute(
            f"SELECT * FROM fastapi_tasks_journal WHERE {where} ORDER BY scheduled_at"
        ).fetchall()
    finally:
        conn.close()
    return [dict(row) for row in found]


def make_app(journal: Any, **options: Any) -> tuple[FastAPI, TaskManager]:
    app = FastAPI()
    manager = add_tasks(app, journal=journal, **options)

    @app.get("/three")
    async def three(tasks: Tasks) -> dict[str, bool]:
        tasks.task(durable=True).schedule(note, 1)
        tasks.after_route.task(durable=True).schedule(note, 2)
        tasks.after_response.task(durable=True).schedule(note, 3)
        return {"ok": True}

    @app.get("/sync")
    def sync_endpoint(tasks: Tasks) -> dict[str, bool]:
        tasks.task(durable=True).schedule(note_sync, 4)
        return {"ok": True}

    @app.get("/fails")
    async def fails(tasks: Tasks) -> None:
        tasks.task(durable=True).schedule(note, 1)
        tasks.after_route.task(durable=True).schedule(note, 2)
        tasks.after_response.task(durable=True).schedule(note, 3)
        raise RuntimeError("endpoint failed")

    @app.websocket("/ws")
    async def socket(websocket: WebSocket, tasks: Tasks) -> None:
        await websocket.accept()
        tasks.task(durable=True).schedule(note, 5)
        await websocket.send_text("scheduled")
        await websocket.close()

    return app, manager


@asynccontextmanager
async def running(
    journal: Any, **options: Any
) -> AsyncGenerator[tuple[httpx2.AsyncClient, TaskManager], None]:
    app, manager = make_app(journal, **options)
    async with serving(app) as client:
        yield client, manager


async def test_each_mode_is_recorded_and_marked_finished(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (client, manager):
        response = await client.get("/three")
        assert response.status_code == 200
        await manager.join(WAIT)
    assert sorted(RAN) == [1, 2, 3]
    found = rows(path)
    assert [row["mode"] for row in found] == ["immediate", "after_route", "after_response"]
    assert {row["state"] for row in found} == {"succeeded"}
    assert {row["attempts"] for row in found} == {1}
    assert {row["func"] for row in found} == {"tests.test_journal:note"}
    assert all(row["owner"] is None for row in found) or all(row["finished_at"] for row in found)


async def test_immediate_and_after_route_rows_are_committed_before_the_response_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    on_disk: list[int] = []
    app, manager = make_app(path)

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        async def watching(message: Any) -> None:
            if message["type"] == "http.response.start":
                on_disk.append(len(rows(path)))
            await send(message)

        await app(scope, receive, watching)

    async with serving(app):
        client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=probe), base_url="http://t")
        async with client:
            assert (await client.get("/three")).status_code == 200
        await manager.join(WAIT)
    assert on_disk == [2]


def test_a_websocket_records_its_work_without_holding_anything(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    app, manager = make_app(path)
    client = TestClient(app)
    with client:
        session = client.websocket_connect("/ws")
        with session:
            assert session.receive_text() == "scheduled"
        manager.join_blocking(WAIT)
    assert RAN == [5]
    assert [row["state"] for row in rows(path)] == ["succeeded"]


async def test_a_def_endpoint_records_its_work(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (client, manager):
        assert (await client.get("/sync")).status_code == 200
        await manager.join(WAIT)
    assert RAN == [("sync", 4)]
    assert [row["state"] for row in rows(path)] == ["succeeded"]


async def test_a_failed_request_commits_only_its_immediate_work(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (client, manager):
        with pytest.raises(RuntimeError, match="endpoint failed"):
            await client.get("/fails")
        await manager.join(WAIT)
    assert RAN == [1]
    assert [row["mode"] for row in rows(path)] == ["immediate"]


async def test_failure_is_recorded_with_its_traceback_and_on_error_runs(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        task = manager.task(durable=True, on_error=on_error, retries=1).schedule(fail, 7)
        await manager.join(WAIT)
    assert task.state is TaskState.FAILED
    assert RAN == [("failed", 7), ("failed", 7), ("on_error", "fail", "RuntimeError")]
    (row,) = rows(path)
    assert row["state"] == "failed"
    assert row["attempts"] == 2
    assert "RuntimeError: boom 7" in row["error"]
    assert "Traceback" in row["error"]


async def test_arguments_are_restored_against_the_annotations(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        GATES["hold"] = anyio.Event()
        manager.task(durable=True).schedule(block, "hold")
        manager.task(durable=True).schedule(move, Point(1, 2))
        await manager.task(durable=True).schedule(note, 0).wait()
    # The first life ran `move`; cut it out of the record to see the restart run it.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE fastapi_tasks_journal SET state = 'pending', owner = NULL "
            "WHERE func LIKE '%:move'"
        )
    conn.close()
    RAN.clear()
    GATES["hold"] = anyio.Event()
    GATES["hold"].set()
    async with running(path) as (_, manager):
        await manager.join(WAIT)
    assert Point(1, 2) in RAN
    assert ("done", "hold") in RAN


async def test_work_cut_short_by_shutdown_runs_again_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        GATES["a"] = anyio.Event()
        SIGNALS["a started"] = anyio.Event()
        task = manager.task(durable=True).schedule(block, "a")
        await until("a started")
    assert task.state is TaskState.CANCELLED
    (row,) = rows(path)
    assert (row["state"], row["owner"], row["attempts"]) == ("pending", None, 1)
    GATES["a"] = anyio.Event()
    GATES["a"].set()
    async with running(path) as (_, manager):
        await manager.join(WAIT)
        assert manager.stats.succeeded == 1
    (row,) = rows(path)
    assert (row["state"], row["attempts"]) == ("succeeded", 2)
    assert RAN == [("started", "a"), ("started", "a"), ("done", "a")]


async def test_interrupted_attempts_count_against_retries(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        # retries=2: the first attempt fails, the second is cut short by shutdown.
        SIGNALS["x started"] = anyio.Event()
        GATES["x"] = anyio.Event()
        manager.task(durable=True, retries=2).schedule(fail_then_block, "x")
        await until("x started")
    assert rows(path)[0]["attempts"] == 2
    GATES.clear()
    RAN.clear()
    async with running(path) as (_, manager):
        await manager.join(WAIT)
    # Two attempts used, two retries given: one more run (at least once), no retry left.
    assert RAN == [("failed", "x")]
    (row,) = rows(path)
    assert (row["state"], row["attempts"]) == ("failed", 3)


async def test_cancelled_work_is_finished_and_does_not_run_again(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        GATES["c"] = anyio.Event()
        task = manager.task(durable=True).schedule(block, "c")
        await task.started.wait()
        assert task.cancel()
        await task.wait()
    assert [row["state"] for row in rows(path)] == ["cancelled"]
    async with running(path) as (_, manager):
        await manager.join(WAIT)
        assert manager.stats.scheduled == 0


async def test_work_whose_function_is_gone_fails_by_name_and_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        GATES["g"] = anyio.Event()
        await manager.task(durable=True).schedule(block, "g").started.wait()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE fastapi_tasks_journal SET func = 'tests.no_such_module:block'")
    conn.close()
    events: list[TaskEvent] = []
    with caplog.at_level(logging.ERROR, logger="fastapi_tasks"):
        async with running(path) as (_, manager):
            manager.add_listener(events.append, {"finished"})
            await manager.join(WAIT)
            assert manager.stats.failed == 1
    assert any(
        "durable task block" in record.getMessage() and "no_such_module" in record.getMessage()
        for record in caplog.records
    )
    (row,) = rows(path)
    assert row["state"] == "failed"
    assert "no_such_module" in row["error"]


async def test_durable_without_a_journal_is_refused_at_the_call(tmp_path: Path) -> None:
    app = FastAPI()
    manager = add_tasks(app)
    async with serving(app):
        with pytest.raises(FastAPITasksJournalError, match=r"add_tasks\(app, journal="):
            manager.task(durable=True).schedule(note, 1)
        assert manager.stats.scheduled == 0


async def test_what_cannot_be_found_again_is_refused_at_the_call(tmp_path: Path) -> None:
    async with running(tmp_path / "j.db") as (_, manager):
        durable = manager.task(durable=True)

        async def local(value: int) -> None:
            pass

        with pytest.raises(TypeError):
            durable.schedule(local, 1)
        with pytest.raises(TypeError):
            durable.schedule(note, object())  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="on_error"):
            manager.task(durable=True, on_error=lambda task, exc: None).schedule(note, 1)

        class LocalError(Exception):
            pass

        with pytest.raises(TypeError, match="retry_on"):
            manager.task(durable=True, retries=1, retry_on=LocalError).schedule(note, 1)
        manager.task(durable=True, retries=1, retry_on=(Transient, OSError)).schedule(note, 2)
        await manager.join(WAIT)
        assert manager.stats.scheduled == 1
    assert RAN == [2]
    assert "Transient" in rows(tmp_path / "j.db")[0]["options"]


async def test_an_app_wide_durable_default(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path, config=TaskConfig(durable=True)) as (client, manager):
        assert (await client.get("/three")).status_code == 200
        manager.task(durable=False).schedule(note, 9)
        await manager.join(WAIT)
    assert sorted(RAN) == [1, 2, 3, 9]
    assert len(rows(path)) == 3


async def test_a_corrupt_file_fails_startup_naming_it_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    garbage = b"this is not an sqlite database" * 100
    path.write_bytes(garbage)
    app, _ = make_app(path)
    with pytest.raises(RuntimeError, match=r"cannot open the task journal .*broken\.db"):
        async with serving(app):
            pass
    assert path.read_bytes() == garbage


async def test_a_newer_schema_fails_startup(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    app, _ = make_app(path)
    with pytest.raises(RuntimeError, match="written by a newer fastapi-tasks"):
        async with serving(app):
            pass


async def test_a_locked_file_fails_startup_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with running(path):
        pass
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        app, _ = make_app(SQLiteJournal(path, lock_timeout=0.1))
        with pytest.raises(RuntimeError, match="locked"):
            async with serving(app):
                pass
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def test_a_failed_commit_answers_503_and_the_work_does_not_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.db"
    journal = SQLiteJournal(path, lock_timeout=0.1)
    async with running(journal) as (client, manager):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            with caplog.at_level(logging.ERROR, logger="fastapi_tasks"):
                response = await client.get("/three")
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        assert response.status_code == 503
        await manager.join(WAIT)
        assert manager.stats.failed == 2  # immediate and after-route: no retry of their own
        assert manager.stats.discarded == 1  # after-response: the request failed
    assert RAN == []
    assert any("answered 503" in record.getMessage() for record in caplog.records)
    assert rows(path) == []


async def test_a_failed_commit_outside_a_request_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = SQLiteJournal(path, lock_timeout=0.1)
    async with running(journal) as (_, manager):
        retrying = anyio.Event()

        def listen(event: TaskEvent) -> None:
            retrying.set()

        manager.add_listener(listen, {"retrying"})
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            task = manager.task(durable=True, retries=1, retry_delay=0.05).schedule(note, 8)
            with anyio.fail_after(WAIT):
                await retrying.wait()
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        await task.wait()
    assert task.state is TaskState.SUCCEEDED
    assert RAN == [8]
    assert [row["state"] for row in rows(path)] == ["succeeded"]


async def test_finished_rows_past_their_retention_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        await manager.task(durable=True).schedule(note, 1).wait()
        await manager.task(durable=True).schedule(note, 2).wait()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE fastapi_tasks_journal SET finished_at = finished_at - 86400 * 8 "
            "WHERE arguments LIKE '%\"value\":1}%'"
        )
    conn.close()
    async with running(SQLiteJournal(path, retention=timedelta(days=7))):
        pass
    assert [row["arguments"] for row in rows(path)] == ['{"v":1,"arguments":{"value":2}}']
    async with running(SQLiteJournal(path, retention=None)):
        pass
    assert len(rows(path)) == 1


async def test_a_process_that_lost_its_lease_stops_the_work_it_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.db"
    with caplog.at_level(logging.ERROR, logger="fastapi_tasks"):
        async with running(SQLiteJournal(path, lease=0.2)) as (_, manager):
            GATES["l"] = anyio.Event()
            SIGNALS["l started"] = anyio.Event()
            task = manager.task(durable=True).schedule(block, "l")
            await until("l started")  # its row is committed: the function runs
            # What another process does once it found this one's lease expired.
            conn = sqlite3.connect(path)
            with conn:
                conn.execute("DELETE FROM fastapi_tasks_owners")
                conn.execute(
                    "INSERT INTO fastapi_tasks_owners VALUES ('elsewhere:1:x', 'elsewhere', 1, "
                    "'', 1e12)"
                )
                conn.execute("UPDATE fastapi_tasks_journal SET owner = 'elsewhere:1:x'")
            conn.close()
            await task.wait()
            assert task.state is TaskState.CANCELLED
    assert any("took over 1 of its durable" in r.getMessage() for r in caplog.records)
    (row,) = rows(path)
    assert (row["state"], row["owner"]) == ("pending", "elsewhere:1:x")


async def test_rows_of_a_dead_owner_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(SQLiteJournal(path, lease=0.2)) as (_, manager):
        SIGNALS["note 11"] = anyio.Event()
        GATES["d"] = anyio.Event()
        await manager.task(durable=True).schedule(block, "d").started.wait()
        conn = sqlite3.connect(path)
        with conn:
            # Another process that died: its lease long expired, its rows unfinished.
            conn.execute("INSERT INTO fastapi_tasks_owners VALUES ('gone:1:y', 'gone', 1, '', 0)")
            conn.execute(
                "INSERT INTO fastapi_tasks_journal (id, func, name, mode, arguments, options, "
                "state, attempts, owner, scheduled_at) VALUES ('r1', 'tests.test_journal:note', "
                "'note', 'immediate', '{\"v\":1,\"arguments\":{\"value\":11}}', '{}', "
                "'pending', 0, 'gone:1:y', 0)"
            )
        conn.close()
        await until("note 11")
        GATES["d"].set()
        await manager.join(WAIT)
    assert {row["state"] for row in rows(path)} == {"succeeded"}


async def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lease"):
        SQLiteJournal(tmp_path / "j.db", lease=0)
    with pytest.raises(ValueError, match="lock_timeout"):
        SQLiteJournal(tmp_path / "j.db", lock_timeout=float("nan"))
    with pytest.raises(ValueError, match="retention"):
        SQLiteJournal(tmp_path / "j.db", retention=timedelta(days=-1))
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteJournal(tmp_path / "j.db", synchronous="off")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="journal must be a file path or an SQLiteJournal"):
        add_tasks(FastAPI(), journal=3)  # type: ignore[arg-type]
    assert repr(SQLiteJournal("x.db", lease=2)) == "SQLiteJournal('x.db', lease=2)"
    journal = SQLiteJournal(tmp_path / "j.db", synchronous="normal")
    assert journal.path == os.fspath(tmp_path / "j.db")


async def test_one_journal_object_serves_one_app_at_a_time(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    async with running(journal):
        app, _ = make_app(journal)
        with pytest.raises(RuntimeError, match="already open"):
            async with serving(app):
                pass


async def test_a_manager_run_without_its_app_runs_unfinished_work_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        GATES["m"] = anyio.Event()
        SIGNALS["m started"] = anyio.Event()
        manager.task(durable=True).schedule(block, "m")
        await until("m started")
    GATES["m"] = anyio.Event()
    GATES["m"].set()
    _, manager = make_app(path)
    async with manager.lifespan():
        await manager.join(WAIT)
        assert manager.journal is not None
    assert RAN[-1] == ("done", "m")
    assert [row["state"] for row in rows(path)] == ["succeeded"]


async def test_an_attempt_waits_for_its_record_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(SQLiteJournal(path, lock_timeout=WAIT)) as (_, manager):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            task = manager.task(durable=True).schedule(note, 3)
            await task.started.wait()
            assert task.waiting_for == "journal"
            assert RAN == []
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        await task.wait()
        assert task.waiting_for is None
    assert task.state is TaskState.SUCCEEDED
    assert RAN == [3]
