# pyright: reportPrivateUsage=false
"""The journal's store below the app: the file checks, the writer thread's failure paths,
ownership of processes, and work that reaches the journal while the app shuts down."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from starlette.types import Message

from fastapi_tasks import FastAPITasksJournalError, Tasks, TaskState, add_tasks
from fastapi_tasks._task import Revived
from fastapi_tasks.journal import SQLiteJournal, _sqlite
from fastapi_tasks.journal._codec import encode_call

from . import test_journal
from .test_journal import GATES, RAN, _clean, note, rows, running

__all__ = ["_clean"]  # the module's autouse fixture clears RAN, GATES and SIGNALS here too

pytestmark = pytest.mark.anyio

WAIT = 10.0


def gone_function(value: int) -> Any:
    """A generator function: a row naming it cannot run again (its body would never run)."""
    yield value


def test_a_process_that_ended_has_no_identity() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert _sqlite.process_identity(child.pid) is None
    assert _sqlite.process_identity(sys.modules["os"].getpid())


def test_a_file_in_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "j.db"
    with pytest.raises(FastAPITasksJournalError, match=r"cannot open the task journal .*j\.db"):
        _sqlite.connect(str(path), 1.0)


def test_a_damaged_page_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE filler (x TEXT)")
    with conn:
        conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,) for _ in range(200)])
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 3 : page * 3 + 200] = b"\xff" * 200  # a table page in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(FastAPITasksJournalError, match="cannot open the task journal"):
        _sqlite.connect(str(path), 1.0)


def test_a_file_claiming_our_schema_without_our_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {_sqlite.SCHEMA_VERSION}")
    conn.close()
    writer = _sqlite._Writer(
        _sqlite._Settings(str(path), 30.0, None, 1.0, "full"),
        lambda revived: None,
        lambda entries, error: None,
        lambda ids: None,
    )
    with pytest.raises(FastAPITasksJournalError, match="cannot open the task journal"):
        writer.open()


def test_a_failure_while_opening_closes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(pid: int) -> str:
        raise RuntimeError("no identity")

    monkeypatch.setattr(_sqlite, "process_identity", broken)
    writer = _sqlite._Writer(
        _sqlite._Settings(str(tmp_path / "j.db"), 30.0, None, 1.0, "full"),
        lambda revived: None,
        lambda entries, error: None,
        lambda ids: None,
    )
    with pytest.raises(RuntimeError, match="no identity"):
        writer.open()
    assert writer.conn is None


def test_a_transaction_that_raises_is_rolled_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")

    def insert_then_fail() -> None:
        with _sqlite._transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        insert_then_fail()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()


async def test_a_journal_that_is_not_open_says_so(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    journal.resume()
    await journal.close()
    journal._lose(["not-here"])
    with pytest.raises(FastAPITasksJournalError, match="is not open"):
        journal._active()


async def test_opened_and_never_started_gives_its_rows_back(tmp_path: Path) -> None:
    journal = SQLiteJournal(tmp_path / "j.db")
    await journal.open(lambda revived: None)
    await journal.close()
    conn = sqlite3.connect(tmp_path / "j.db")
    assert conn.execute("SELECT count(*) FROM fastapi_tasks_owners").fetchone() == (0,)
    conn.close()


class _Warnings(logging.Handler):
    """Sets an event when a record with ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_a_renewal_that_cannot_write_is_logged_and_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    handler = _Warnings("could not renew")
    logger = logging.getLogger("fastapi_tasks")
    logger.addHandler(handler)
    try:
        async with running(SQLiteJournal(path, lease=0.2, lock_timeout=0.02)) as (_, manager):
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            try:
                with anyio.fail_after(WAIT):
                    await anyio.to_thread.run_sync(handler.seen.wait)
            finally:
                conn.execute("ROLLBACK")
                conn.close()
            await manager.task(durable=True).schedule(note, 1).wait()
    finally:
        logger.removeHandler(handler)
    assert RAN == [1]


async def test_rows_that_cannot_be_given_back_wait_for_the_lease(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    handler = _Warnings("could not give back")
    logger = logging.getLogger("fastapi_tasks")
    logger.addHandler(handler)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        async with running(SQLiteJournal(path, lease=60, lock_timeout=0.02)) as (_, manager):
            GATES["r"] = anyio.Event()
            test_journal.SIGNALS["r started"] = anyio.Event()
            manager.task(durable=True).schedule(test_journal.block, "r")
            await test_journal.until("r started")
            conn.execute("BEGIN EXCLUSIVE")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        logger.removeHandler(handler)
    assert handler.seen.is_set()
    (row,) = rows(path)
    assert row["state"] == "pending"
    assert row["owner"] is not None


async def test_a_row_whose_function_is_now_a_generator_fails_and_stays(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO fastapi_tasks_journal (id, func, name, mode, arguments, options, "
            "state, attempts, owner, scheduled_at) VALUES ('g1', "
            "'tests.test_journal_store:gone_function', 'gone', 'immediate', ?, '{}', "
            "'pending', 0, NULL, 0)",
            (encode_call(note, (1,), {}),),
        )
    conn.close()
    async with running(path) as (_, manager):
        await manager.join(WAIT)
        assert manager.stats.failed == 1
    (row,) = rows(path)
    assert row["state"] == "failed"
    assert "generator" in row["error"]


async def test_work_read_back_after_shutdown_began_stays_unfinished(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        engine = manager._engine
        entry = _sqlite.Entry("late", "tests.test_journal:note", "note", "immediate", "{}", "{}", 0)
    # Rows a renewal took just as the app stopped: they are not run, and not finished.
    engine.adopt([Revived(entry, note, (5,), {}, {}, None)])
    assert engine.cancelled == 1
    assert RAN == []


async def test_after_response_work_whose_moment_comes_during_shutdown_runs_after_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    app = FastAPI()
    manager = add_tasks(app, journal=path)
    body_may_end = anyio.Event()
    response_started = anyio.Event()

    @app.get("/slow")
    async def slow(tasks: Tasks) -> Any:
        from fastapi.responses import StreamingResponse

        tasks.after_response.task(durable=True).schedule(note, 7)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"a"
            response_started.set()
            await body_may_end.wait()
            yield b"b"

        return StreamingResponse(chunks())

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/slow",
        "raw_path": b"/slow",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        pass

    holder = anyio.Event()
    ended = anyio.Event()
    manager.add_listener(
        lambda event: ended.set() if event.task.name == "note" else None, {"finished"}
    )
    test_journal.GATES["hold"] = holder
    test_journal.SIGNALS["hold started"] = anyio.Event()
    from fastapi_tasks.testing import run_lifespan

    async with anyio.create_task_group() as group:
        shutdown = anyio.Event()

        async def serve() -> None:
            async with run_lifespan(app):
                # Shielded work keeps the shutdown going while the response ends.
                manager.task(durable=False, shield=True).schedule(test_journal.block, "hold")
                await test_journal.until("hold started")
                group.start_soon(app, scope, receive, send)
                with anyio.fail_after(WAIT):
                    await response_started.wait()
                shutdown.set()
            RAN.append("stopped")

        group.start_soon(serve)
        with anyio.fail_after(WAIT):
            await shutdown.wait()
        await anyio.wait_all_tasks_blocked()  # the drain waits for the shielded work
        assert not manager.running
        body_may_end.set()
        with anyio.fail_after(WAIT):
            await ended.wait()  # recorded, and cancelled by the shutdown
        holder.set()
    assert 7 not in RAN
    (row,) = rows(path)
    assert (row["mode"], row["state"], row["owner"]) == ("after_response", "pending", None)
    RAN.clear()
    async with running(path) as (_, again):
        await again.join(WAIT)
    assert RAN == [7]
    assert TaskState.SUCCEEDED.value == rows(path)[0]["state"]


def test_a_file_whose_structure_is_damaged_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE a (x)")
    conn.execute("CREATE TABLE b (y)")
    with conn:
        conn.executemany("INSERT INTO a VALUES (?)", [("x" * 100,)] * 300)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'a'").fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    with conn:  # two tables on the same pages: what a damaged file looks like to SQLite
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = 'b'", (root,))
    conn.close()
    with pytest.raises(FastAPITasksJournalError, match="integrity check failed"):
        _sqlite.connect(str(path), 1.0)


async def test_options_that_are_references_come_back_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    async with running(path) as (_, manager):
        GATES["o"] = anyio.Event()
        test_journal.SIGNALS["o started"] = anyio.Event()
        manager.task(
            durable=True,
            on_error=test_journal.on_error,
            retry_on=(test_journal.Transient,),
            timeout=30,
        ).schedule(test_journal.block, "o")
        await test_journal.until("o started")
    GATES["o"] = anyio.Event()
    test_journal.SIGNALS["o started"] = anyio.Event()
    async with running(path) as (_, manager):
        await test_journal.until("o started")
        (task,) = manager.tasks
        assert task.config.on_error is test_journal.on_error
        assert task.config.retry_on == (test_journal.Transient,)
        assert task.config.timeout == 30
        task.cancel()
        await task.wait()
    assert rows(path)[0]["state"] == "cancelled"
