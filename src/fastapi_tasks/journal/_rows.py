"""Reading a journal file from outside the app, and making finished rows run again.

What the command line (``python -m fastapi_tasks.journal``) and the monitor's
history use. Reading opens the file read-only, so it never creates a journal, never
changes one, and works while apps write to it (WAL mode). ``retry_rows`` is the one
write: it turns finished rows back into unfinished ones, which a live app (or the
next one to start) takes and runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Generator, Sequence
from typing import Any

from ..errors import FastAPITasksJournalError
from ._sqlite import OWNERS, SCHEMA_VERSION, TASKS

__all__ = ["STATES", "JournalRow", "count_by_state", "read_rows", "retry_rows"]

STATES: tuple[str, ...] = ("pending", "succeeded", "failed", "cancelled")
"""Every state a row can be in; 'pending' means unfinished (waiting or running)."""

_COLUMNS = (
    "id, func, name, mode, arguments, options, state, attempts, owner, "
    "scheduled_at, started_at, finished_at, error, request"
)


@dataclasses.dataclass(frozen=True)
class JournalRow:
    """One row of the journal: a durable task, as the file holds it now.

    Times are seconds since the epoch (``time.time()``); ``arguments`` and
    ``options`` are the JSON text the row keeps.
    """

    id: str
    func: str
    """The function, as ``"module:qualname"``."""
    name: str
    mode: str
    """``immediate``, ``after_route`` or ``after_response``."""
    arguments: str
    options: str
    state: str
    """``pending`` (unfinished: waiting or running), ``succeeded``, ``failed`` or ``cancelled``."""
    attempts: int
    """Attempts started, over every process that ran the row."""
    owner: str | None
    """``"host:pid:token"`` of the process that owns (or finished) the row; None: free to take."""
    scheduled_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    """The formatted traceback of the last failure."""
    request: str | None
    """``"GET /path"`` of the request that scheduled the work, when it was noted."""

    def to_json(self) -> dict[str, Any]:
        """The row as JSON values, with ``arguments`` and ``options`` decoded."""
        data = dataclasses.asdict(self)
        data["arguments"] = json.loads(self.arguments)
        data["options"] = json.loads(self.options)
        return data


def _uri(path: str | os.PathLike[str], mode: str) -> str:
    # Percent-escape the path: a '?' or '#' in a file name must not end it.
    return f"file:{urllib.parse.quote(os.fspath(path))}?mode={mode}"


@contextlib.contextmanager
def _open(
    path: str | os.PathLike[str], *, write: bool = False, lock_timeout: float = 5.0
) -> Generator[sqlite3.Connection, None, None]:
    """An existing journal file, checked: ours, and a schema this version reads."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FastAPITasksJournalError(f"no task journal at {name}: the file does not exist")
    with contextlib.ExitStack() as stack:
        try:
            conn = sqlite3.connect(
                _uri(name, "rw" if write else "ro"),
                uri=True,
                timeout=lock_timeout,
                isolation_level=None,
            )
            stack.callback(conn.close)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
                    (TASKS, OWNERS),
                )
            }
        except sqlite3.Error as exc:
            raise FastAPITasksJournalError(f"cannot read the task journal {name}: {exc}") from exc
        if version > SCHEMA_VERSION:
            raise FastAPITasksJournalError(
                f"the task journal {name} was written by a newer fastapi-tasks (schema "
                f"{version}, this version reads {SCHEMA_VERSION})"
            )
        if tables != {TASKS, OWNERS}:
            raise FastAPITasksJournalError(
                f"{name} is not a task journal: it has no {TASKS} and {OWNERS} tables"
            )
        yield conn


def _query(conn: sqlite3.Connection, name: str, sql: str, params: Sequence[Any]) -> list[Any]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise FastAPITasksJournalError(f"cannot read the task journal {name}: {exc}") from exc


def read_rows(
    path: str | os.PathLike[str],
    *,
    state: str | None = None,
    limit: int = 100,
    finished_since: float | None = None,
    ids: Sequence[str] | None = None,
) -> list[JournalRow]:
    """Rows of the journal at ``path``, newest first (by when they were scheduled).

    Args:
        path: The journal file. It is opened read-only; apps may be writing to it.
        state: Only rows in this state (one of ``STATES``).
        limit: At most this many rows.
        finished_since: Only rows that finished at or after this time (seconds since
            the epoch); unfinished rows are left out.
        ids: Only the rows with these ids (ids not in the journal are skipped).

    Raises:
        FastAPITasksJournalError: The file is missing, is not a journal, or cannot be read.
        ValueError: ``state`` is not a known state, or ``limit`` is below 1.
    """
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if finished_since is not None:
        where.append("finished_at >= ?")
        params.append(finished_since)
    if ids is not None:
        # One parameter whatever the number of ids: SQLite limits how many it takes.
        where.append("id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(ids)))
    sql = f"SELECT {_COLUMNS} FROM {TASKS}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY scheduled_at DESC, id LIMIT ?"
    params.append(limit)
    with _open(path) as conn:
        rows = _query(conn, os.fspath(path), sql, params)
    return [JournalRow(*row) for row in rows]


def count_by_state(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many rows the journal at ``path`` holds in each state (every state is present).

    Raises:
        FastAPITasksJournalError: The file is missing, is not a journal, or cannot be read.
    """
    counts: dict[str, int] = dict.fromkeys(STATES, 0)
    with _open(path) as conn:
        rows = _query(
            conn, os.fspath(path), f"SELECT state, count(*) FROM {TASKS} GROUP BY state", ()
        )
    for state, count in rows:
        counts[state] = count
    return counts


def retry_rows(
    path: str | os.PathLike[str],
    ids: Sequence[str] | None,
    *,
    all_failed: bool = False,
    lock_timeout: float = 5.0,
) -> int:
    """Make finished rows unfinished again, so that they run once more; how many changed.

    A retried row starts over: no owner, no attempts counted (its ``retries`` apply
    in full), no error, no start or finish time. A live app takes rows without an
    owner within ``lease / 4`` seconds and runs them; otherwise the next app to
    start on the file does. Unfinished (``pending``) rows are never touched.

    Args:
        path: The journal file.
        ids: Rows to retry: failed and cancelled ones, and succeeded ones too, since
            they are named. Ids not in the journal are skipped.
        all_failed: Also retry every failed row.
        lock_timeout: Seconds to wait for another process's write lock.

    Raises:
        FastAPITasksJournalError: The file is missing, is not a journal, or stayed
            locked past ``lock_timeout``.
        ValueError: Neither ``ids`` nor ``all_failed`` was given.
    """
    if ids is None and not all_failed:
        raise ValueError("retry_rows() needs ids, or all_failed=True")
    name = os.fspath(path)
    chosen: list[str] = []
    params: list[Any] = []
    if ids is not None:
        chosen.append("id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(ids)))
    if all_failed:
        chosen.append("state = 'failed'")
    sql = (
        f"UPDATE {TASKS} SET state = 'pending', owner = NULL, attempts = 0, error = NULL, "
        f"started_at = NULL, finished_at = NULL WHERE state != 'pending' AND "
        f"({' OR '.join(chosen)})"
    )
    with _open(name, write=True, lock_timeout=lock_timeout) as conn:
        try:
            # Closing the connection rolls back what a failed statement left open.
            conn.execute("BEGIN IMMEDIATE")
            changed = conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                reason = f"it stayed locked by another process for {lock_timeout:g} s"
            else:
                reason = str(exc)
            raise FastAPITasksJournalError(
                f"cannot retry rows in the task journal {name}: {reason}"
            ) from exc
    return changed
