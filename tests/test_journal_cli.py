"""The journal's reader and ``python -m fastapi_tasks.journal``, on files real apps wrote."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fastapi import FastAPI

from fastapi_tasks import Tasks, add_tasks
from fastapi_tasks.errors import FastAPITasksJournalError
from fastapi_tasks.journal import SQLiteJournal
from fastapi_tasks.journal._cli import main
from fastapi_tasks.journal._rows import count_by_state, read_rows, retry_rows
from fastapi_tasks.journal._sqlite import OWNERS, TASKS
from fastapi_tasks.testing import run_lifespan

from .conftest import serving

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
WAIT = 10.0
"""Seconds a test waits for work it expects to run."""

# What the durable functions below did, in order; and the orders that fail on purpose.
delivered: list[str] = []
failing: set[str] = set()
wakers: list[anyio.Event] = []


async def deliver(order: str) -> None:
    if order in failing:
        raise RuntimeError(f"cannot deliver {order}")
    delivered.append(order)
    for waker in wakers:
        waker.set()


async def hang(order: str) -> None:
    for waker in wakers:
        waker.set()
    await anyio.sleep_forever()  # cancelled by the test, or by the shutdown


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    yield
    delivered.clear()
    failing.clear()
    wakers.clear()


class Journal:
    """A journal file a real app wrote, and the ids of its rows by what happened to them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, str] = {}

    def run(self, *argv: str) -> int:
        return main([str(self.path), *argv])


async def running(func: object) -> None:
    """Wait until ``func`` runs: its row was committed and its attempt began."""
    waker = anyio.Event()
    wakers.append(waker)
    with anyio.fail_after(WAIT):
        await waker.wait()
    wakers.remove(waker)


async def write_journal(path: Path, *, unfinished: bool) -> Journal:
    """Run an app on ``path``: one durable task succeeds (from a request), one fails,
    one is cancelled, and (``unfinished``) one is still running at shutdown."""
    journal = Journal(path)
    app = FastAPI()
    manager = add_tasks(app, journal=path)
    manager.add_listener(lambda event: None, {"finished"})  # rows note their request
    failing.add("b2")

    @app.post("/orders/{order}")
    async def order(order: str, tasks: Tasks) -> dict[str, str]:
        tasks.task(durable=True).schedule(deliver, order)
        return {"order": order}

    async with serving(app) as client:
        assert (await client.post("/orders/a1")).status_code == 200
        with anyio.fail_after(WAIT):
            await manager.join()
        manager.task(durable=True, retries=1).schedule(deliver, "b2")
        cancelled = manager.task(durable=True).schedule(hang, "c3")
        await running(hang)
        cancelled.cancel()
        with anyio.fail_after(WAIT):
            await manager.join()
        if unfinished:
            manager.task(durable=True).schedule(hang, "d4")
            await running(hang)
    # The rows' ids, found by their arguments: each order is in one row.
    outcomes = {"a1": "succeeded", "b2": "failed", "c3": "cancelled", "d4": "pending"}
    for row in read_rows(path):
        journal.ids[outcomes[json.loads(row.arguments)["arguments"]["order"]]] = row.id
    return journal


@pytest.fixture
async def journal(tmp_path: Path) -> Journal:
    return await write_journal(tmp_path / "j.db", unfinished=True)


# -- list ----------------------------------------------------------------------------


async def test_list_prints_a_table_newest_first(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    assert journal.run("list") == 0
    out = capsys.readouterr().out
    header, *lines = out.splitlines()
    assert header.split() == ["ID", "STATE", "TRIES", "SCHEDULED", "FINISHED", "NAME", "ERROR"]
    order = [line.split()[0] for line in lines]
    assert order == [journal.ids[s] for s in ("pending", "cancelled", "failed", "succeeded")]
    rows = {line.split()[0]: line for line in lines}
    failed = rows[journal.ids["failed"]]
    assert re.search(rf"failed +2 +{ISO_UTC} +{ISO_UTC} +deliver +RuntimeError: cannot", failed)
    assert re.search(rf"pending +1 +{ISO_UTC} +- +hang$", rows[journal.ids["pending"]])
    assert re.search(r"succeeded +1 .* deliver$", rows[journal.ids["succeeded"]])


async def test_list_filters_by_state_and_limits(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    assert journal.run("list", "--state", "failed") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [[journal.ids["failed"], "failed"]]

    assert journal.run("list", "--limit", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(journal.ids["pending"])


async def test_list_as_json(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    assert journal.run("list", "--json", "--state", "failed") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["id"] == journal.ids["failed"]
    assert row["func"] == f"{__name__}:deliver"
    assert row["arguments"] == {"v": 1, "arguments": {"order": "b2"}}
    assert row["options"] == {"retries": 1}
    assert (row["state"], row["attempts"], row["mode"]) == ("failed", 2, "immediate")
    assert row["error"].rstrip().endswith("RuntimeError: cannot deliver b2")
    assert row["scheduled_at"] <= row["started_at"] <= row["finished_at"] <= time.time()


async def test_list_says_when_there_is_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.db"
    app = FastAPI()
    add_tasks(app, journal=path)
    async with run_lifespan(app):
        pass
    assert main([str(path), "list"]) == 0
    assert capsys.readouterr().out == "no rows\n"
    assert main([str(path), "list", "--state", "failed"]) == 0
    assert capsys.readouterr().out == "no rows in state failed\n"
    assert main([str(path), "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# -- show ----------------------------------------------------------------------------


async def test_show_prints_every_column_the_arguments_and_the_error(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    ident = journal.ids["failed"]
    assert journal.run("show", ident) == 0
    out = capsys.readouterr().out
    assert f"id         {ident}\n" in out
    assert "name       deliver\n" in out
    assert f"function   {__name__}:deliver\n" in out
    assert "mode       immediate\n" in out
    assert "state      failed\n" in out
    assert "attempts   2\n" in out
    assert re.search(r"^owner      \S+:\d+:\w+$", out, re.MULTILINE)
    assert "request    -\n" in out
    for label in ("scheduled", "started", "finished"):
        assert re.search(rf"^{label} +{ISO_UTC}$", out, re.MULTILINE)
    assert 'options    {"retries":1}\n' in out
    assert '"arguments": {\n      "order": "b2"\n    }' in out
    error = out.split("error:\n", 1)[1]
    assert error.startswith("  Traceback (most recent call last):\n")
    assert error.endswith("  RuntimeError: cannot deliver b2\n")


async def test_show_a_row_from_a_request_and_an_unfinished_one(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    assert journal.run("show", journal.ids["succeeded"]) == 0
    out = capsys.readouterr().out
    assert "request    POST /orders/a1\n" in out
    assert "error:" not in out

    assert journal.run("show", journal.ids["pending"], "--json") == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["state"], row["owner"], row["finished_at"]) == ("pending", None, None)
    assert row["arguments"] == {"v": 1, "arguments": {"order": "d4"}}


async def test_show_an_unknown_id(journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    assert journal.run("show", "feedface") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"python -m fastapi_tasks.journal: error: no row with id feedface in the task "
        f"journal {journal.path}\n"
    )


# -- stats ---------------------------------------------------------------------------


async def test_stats_counts_rows_by_state(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    assert journal.run("stats") == 0
    assert capsys.readouterr().out.split("\n") == [
        "pending    1",
        "succeeded  1",
        "failed     1",
        "cancelled  1",
        "total      4",
        "",
    ]
    assert journal.run("stats", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "pending": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }


# -- retry ---------------------------------------------------------------------------


async def test_retry_failed_rows_run_again_in_the_next_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = await write_journal(tmp_path / "j.db", unfinished=False)
    assert delivered == ["a1"]
    failing.clear()  # the cause of the failure is fixed

    assert journal.run("retry", "--failed") == 0
    assert capsys.readouterr().out.startswith("1 row(s) will run again")
    [row] = read_rows(journal.path, ids=[journal.ids["failed"]])
    assert (row.state, row.owner, row.attempts, row.error) == ("pending", None, 0, None)
    assert (row.started_at, row.finished_at) == (None, None)
    assert count_by_state(journal.path)["cancelled"] == 1  # --failed leaves it alone

    app = FastAPI()
    manager = add_tasks(app, journal=journal.path)
    async with run_lifespan(app):
        with anyio.fail_after(WAIT):
            await manager.join()
    assert delivered == ["a1", "b2"]
    [row] = read_rows(journal.path, ids=[journal.ids["failed"]])
    assert (row.state, row.attempts, row.error) == ("succeeded", 1, None)
    assert journal.run("retry", "--failed") == 0
    assert capsys.readouterr().out == "nothing to retry\n"


async def test_retry_by_id_takes_succeeded_and_cancelled_rows_too(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    pending, succeeded = journal.ids["pending"], journal.ids["succeeded"]
    cancelled = journal.ids["cancelled"]
    assert journal.run("retry", pending, succeeded, cancelled, succeeded) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{pending} is unfinished (waiting or running): left as it is",
        "2 row(s) will run again: a running app takes them within lease/4 seconds, or the "
        "next app to start on this file does",
    ]
    counts = count_by_state(journal.path)
    assert counts == {"pending": 3, "succeeded": 0, "failed": 1, "cancelled": 0}

    assert journal.run("retry", pending) == 0
    assert capsys.readouterr().out.endswith("left as it is\nnothing to retry\n")


async def test_retry_refuses_unknown_ids_and_changes_nothing(
    journal: Journal, capsys: pytest.CaptureFixture[str]
) -> None:
    before = count_by_state(journal.path)
    assert journal.run("retry", journal.ids["failed"], "nope", "gone") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"python -m fastapi_tasks.journal: error: no row with id nope, gone in the task "
        f"journal {journal.path}; nothing was changed\n"
    )
    assert count_by_state(journal.path) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give the ids of the rows to retry, or --failed for every failed row"),
        (["abc", "--failed"], "give row ids or --failed, not both"),
    ],
)
def test_retry_needs_ids_or_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([str(tmp_path / "j.db"), "retry", *argv]) == 2
    assert capsys.readouterr().err == f"python -m fastapi_tasks.journal: error: {message}\n"


async def test_a_running_app_takes_retried_rows(tmp_path: Path) -> None:
    journal = await write_journal(tmp_path / "j.db", unfinished=False)
    failing.clear()
    ran = anyio.Event()
    wakers.append(ran)
    app = FastAPI()
    # A short lease: the app looks for rows without an owner every lease/4 seconds.
    add_tasks(app, journal=SQLiteJournal(journal.path, lease=0.2))
    async with run_lifespan(app):
        assert retry_rows(journal.path, [journal.ids["failed"]]) == 1
        with anyio.fail_after(WAIT):
            await ran.wait()
    assert delivered == ["a1", "b2"]
    assert count_by_state(journal.path)["succeeded"] == 2


# -- the reader's functions ------------------------------------------------------------


async def test_read_rows_selects(journal: Journal) -> None:
    everything = read_rows(journal.path)
    assert [row.id for row in everything] == [
        journal.ids[state] for state in ("pending", "cancelled", "failed", "succeeded")
    ]
    finished = {row.id: row for row in everything if row.finished_at is not None}
    cancelled = finished[journal.ids["cancelled"]]
    since = read_rows(journal.path, finished_since=cancelled.finished_at)
    assert [row.id for row in since] == [cancelled.id]
    assert read_rows(journal.path, finished_since=time.time() + 60) == []
    chosen = read_rows(journal.path, ids=[journal.ids["failed"], "nope", journal.ids["pending"]])
    assert [row.id for row in chosen] == [journal.ids["pending"], journal.ids["failed"]]
    assert read_rows(journal.path, ids=[]) == []
    [failed] = read_rows(journal.path, state="failed", limit=5)
    assert failed.to_json()["arguments"] == {"v": 1, "arguments": {"order": "b2"}}
    assert json.loads(failed.arguments) == {"v": 1, "arguments": {"order": "b2"}}


async def test_retry_rows_with_ids_and_all_failed(journal: Journal) -> None:
    changed = retry_rows(journal.path, [journal.ids["cancelled"]], all_failed=True)
    assert changed == 2
    assert count_by_state(journal.path) == {
        "pending": 3,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
    }


def test_reader_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="state must be one of pending, succeeded"):
        read_rows(tmp_path / "j.db", state="done")
    with pytest.raises(ValueError, match="limit must be at least 1, got 0"):
        read_rows(tmp_path / "j.db", limit=0)
    with pytest.raises(ValueError, match=r"retry_rows\(\) needs ids, or all_failed=True"):
        retry_rows(tmp_path / "j.db", None)


# -- files that are not usable journals -------------------------------------------------


def _database(path: Path, *statements: str) -> Path:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return path


@pytest.fixture(
    params=["missing", "not sqlite", "no tables", "newer schema", "other columns"],
)
def unusable(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "tasks.db"
    kind: str = request.param
    if kind == "missing":
        return path, f"no task journal at {path}: the file does not exist"
    if kind == "not sqlite":
        path.write_bytes(b"not a database at all " * 100)
        return path, f"cannot read the task journal {path}: file is not a database"
    if kind == "no tables":
        _database(path, "CREATE TABLE notes (text TEXT)")
        return path, f"{path} is not a task journal: it has no {TASKS} and {OWNERS} tables"
    if kind == "newer schema":
        _database(path, "PRAGMA user_version = 99")
        return path, (
            f"the task journal {path} was written by a newer fastapi-tasks (schema 99, "
            "this version reads 1)"
        )
    _database(path, f"CREATE TABLE {TASKS} (id TEXT)", f"CREATE TABLE {OWNERS} (owner TEXT)")
    return path, f"the task journal {path}: no such column"  # found reading, or retrying


@pytest.mark.parametrize(
    "argv", [["list"], ["show", "abc"], ["stats"], ["retry", "--failed"], ["retry", "abc"]]
)
def test_an_unusable_file_is_one_line_on_stderr(
    unusable: tuple[Path, str], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, message = unusable
    before = path.read_bytes() if path.exists() else None
    assert main([str(path), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("python -m fastapi_tasks.journal: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1
    assert (path.read_bytes() if path.exists() else None) == before


def test_the_reader_raises_journal_errors(unusable: tuple[Path, str]) -> None:
    path, message = unusable
    with pytest.raises(FastAPITasksJournalError, match=re.escape(message)):
        read_rows(path)
    with pytest.raises(FastAPITasksJournalError, match=re.escape(message)):
        count_by_state(path)


def test_retry_waits_for_a_lock_then_says_so(tmp_path: Path) -> None:
    path = _database(
        tmp_path / "j.db",
        f"CREATE TABLE {TASKS} (id TEXT, state TEXT, owner TEXT, attempts INTEGER, "
        "error TEXT, started_at REAL, finished_at REAL)",
        f"CREATE TABLE {OWNERS} (owner TEXT)",
        f"INSERT INTO {TASKS} (id, state, attempts) VALUES ('a', 'failed', 1)",
    )
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writes
    try:
        with pytest.raises(
            FastAPITasksJournalError,
            match=f"cannot retry rows in the task journal {re.escape(str(path))}: it stayed "
            "locked by another process for 0.05 s",
        ):
            retry_rows(path, ["a"], lock_timeout=0.05)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert retry_rows(path, ["a"]) == 1


def test_retry_reports_other_database_errors(tmp_path: Path) -> None:
    path = _database(
        tmp_path / "j.db", f"CREATE TABLE {TASKS} (id TEXT)", f"CREATE TABLE {OWNERS} (owner TEXT)"
    )
    with pytest.raises(
        FastAPITasksJournalError,
        match=f"cannot retry rows in the task journal {re.escape(str(path))}: no such column",
    ):
        retry_rows(path, None, all_failed=True)


def test_a_path_with_uri_characters(tmp_path: Path) -> None:
    path = _database(
        tmp_path / "odd?name#1%.db",
        f"CREATE TABLE {TASKS} (id TEXT, state TEXT)",
        f"CREATE TABLE {OWNERS} (owner TEXT)",
        f"INSERT INTO {TASKS} VALUES ('a', 'failed'), ('b', 'failed'), ('c', 'odd')",
    )
    counts = count_by_state(path)
    assert counts == {"pending": 0, "succeeded": 0, "failed": 2, "cancelled": 0, "odd": 1}


# -- the command line itself -----------------------------------------------------------


def test_help_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m fastapi_tasks.journal [-h] PATH COMMAND ...")
    for command in ("list", "show", "retry", "stats"):
        assert re.search(rf"^    {command} ", out, re.MULTILINE)

    assert main([str(tmp_path / "j.db"), "list", "--limit", "0"]) == 2
    assert "argument --limit: must be a whole number >= 1, got '0'" in capsys.readouterr().err
    assert main([str(tmp_path / "j.db"), "list", "--limit", "many"]) == 2
    assert "got 'many'" in capsys.readouterr().err
    assert main([str(tmp_path / "j.db")]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


async def test_python_dash_m_in_a_subprocess(journal: Journal) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "fastapi_tasks.journal", str(journal.path)]
    with anyio.fail_after(60):
        stats = await anyio.run_process([*command, "stats"], env=env)
        missing = await anyio.run_process([*command, "show", "nope"], env=env, check=False)
    assert (stats.returncode, stats.stderr) == (0, b"")
    assert b"total      4" in stats.stdout
    assert missing.returncode == 2
    assert missing.stdout == b""
    assert missing.stderr.startswith(
        b"python -m fastapi_tasks.journal: error: no row with id nope in the task journal "
    )


async def test_list_shortens_long_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    order = "o" * 80
    failing.add(order)
    app = FastAPI()
    manager = add_tasks(app, journal=tmp_path / "j.db")
    async with run_lifespan(app):
        manager.task(durable=True).schedule(deliver, order)
        with anyio.fail_after(WAIT):
            await manager.join()
    assert main([str(tmp_path / "j.db"), "list"]) == 0
    error = capsys.readouterr().out.splitlines()[1].split("deliver  ", 1)[1]
    assert error == "RuntimeError: cannot deliver " + "o" * 30 + "…"
