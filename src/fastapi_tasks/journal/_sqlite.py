"""The SQLite journal: durable work's rows, written in grouped commits by one thread.

One thread per open journal owns the connection. The event loop never touches the
file: it queues operations (a new row, an attempt that begins, a final state) and
the thread writes whatever has queued up in one transaction, then tells the loop
which rows landed through the runner (the one way back to the loop). The same
thread renews this process's lease every ``lease / 4`` seconds, takes over the rows
of processes that died, and deletes finished rows past their retention.

Ownership: every row names the process that runs it (``owner``). A process owns its
rows while its lease, a row in the owners table, is renewed. Rows whose owner is gone
(lease expired, or a process on this host that no longer exists), and rows given
back at a clean shutdown (``owner`` NULL), are taken by the next live process that
looks. A process that finds its own lease taken (it stalled past the lease) stops
the work it lost, so a row never runs in two live processes at once; every write
names the owner, so a process never writes a row it no longer owns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import queue
import socket
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Generator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import anyio

from .._task import Event, LoopCalls, Revived, TaskState, Work
from ..errors import FastAPITasksJournalError
from ._codec import decode_call, encode_call, function_ref, resolve

__all__ = ["SCHEMA_VERSION", "Entry", "SQLiteJournal", "connect"]

logger = logging.getLogger("fastapi_tasks")

SCHEMA_VERSION = 1

TASKS = "fastapi_tasks_journal"
OWNERS = "fastapi_tasks_owners"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TASKS} (
    id TEXT PRIMARY KEY,
    func TEXT NOT NULL,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    arguments TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    scheduled_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    request TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {TASKS}_unfinished ON {TASKS} (owner) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS {TASKS}_finished ON {TASKS} (finished_at) WHERE state != 'pending';
CREATE TABLE IF NOT EXISTS {OWNERS} (
    owner TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    identity TEXT NOT NULL,
    lease_until REAL NOT NULL
);
"""

LAZY_WRITES = 0.05
"""Seconds an attempt's count or a final state may wait to share a commit with new rows."""

BUSY = 0.01
"""A commit that starts within this many seconds of the last one ends lingers first..."""
LINGER = 0.003
"""...this many seconds, so that under load each commit carries more rows."""

RETENTION_EVERY = 3600.0
"""Seconds between two deletions of finished rows past their retention."""

# The options a row keeps: plain values, and references for on_error and retry_on.
# A per-task limiter cannot be kept; after a restart the app-wide one applies.
_KEPT = ("timeout", "retries", "retry_delay", "retry_backoff", "shield", "run_on_failure")

_NEW, _SENT, _STORED, _REFUSED = 0, 1, 2, 3

HOST = socket.gethostname()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # pragma: no cover - not Linux
        return ""


_BOOT = _boot_id()


def process_identity(pid: int) -> str | None:
    """Who runs as ``pid`` on this host now (None: nobody), so a reused pid does not count.

    On Linux the boot and the process's start time tell a process apart from a later
    one with the same pid; elsewhere only whether the pid exists is known.
    """
    if _BOOT:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # The command name (field 2) may hold spaces and parentheses: count after it.
        fields = stat.rsplit(")", 1)[1].split()
        return f"{_BOOT}:{fields[19]}"
    try:  # pragma: no cover - not Linux
        os.kill(pid, 0)
    except ProcessLookupError:  # pragma: no cover - not Linux
        return None
    except PermissionError:  # pragma: no cover - not Linux
        pass
    return ""  # pragma: no cover - not Linux


class Entry:
    """The journal's record of one durable task, on the loop's side."""

    __slots__ = (
        "arguments",
        "base",
        "cancelled",
        "counted",
        "error",
        "func",
        "held",
        "id",
        "mode",
        "name",
        "options",
        "request",
        "scheduled_at",
        "status",
        "waiter",
    )

    def __init__(
        self,
        id: str,
        func: str,
        name: str,
        mode: str,
        arguments: str,
        options: str,
        base: int,
    ) -> None:
        self.id = id
        self.func = func
        self.name = name
        self.mode = mode
        self.arguments = arguments
        self.options = options
        self.base = base  # attempts used before this process took the row
        self.status = _NEW
        self.error: BaseException | None = None
        self.waiter: Event | None = None
        self.cancelled = False  # by cancel(): finished, unlike a cancel at shutdown
        self.held = False  # a response waits for its commit
        self.counted = base  # attempts the row counts so far
        self.request: str | None = None
        self.scheduled_at = 0.0


# What the loop queues for the thread: a row to write, in full (new, or with its new
# state), and the entry to tell once it landed (only for new rows).
_Row = tuple[Any, ...]
_Op = tuple["Entry | None", _Row]


def _row(
    entry: Entry,
    state: str,
    attempts: int,
    started_at: float | None,
    finished_at: float | None,
    error: str | None,
) -> _Row:
    return (
        entry.id,
        entry.func,
        entry.name,
        entry.mode,
        entry.arguments,
        entry.options,
        state,
        attempts,
        entry.scheduled_at,
        started_at,
        finished_at,
        error,
        entry.request,
    )


# One statement writes a whole batch: new rows, and new states of rows this process
# owns. A statement per row would hand the interpreter lock back and forth with the
# event loop once per row; here it happens once per commit.
_COLUMNS = (
    "id, func, name, mode, arguments, options, state, attempts, scheduled_at, started_at, "
    "finished_at, error, request"
)
_UPSERT = (
    f"INSERT INTO {TASKS} ({_COLUMNS}, owner) SELECT "
    + ", ".join(f"json_extract(value, '$[{index}]')" for index in range(13))
    + f", ? FROM json_each(?) WHERE true ON CONFLICT (id) DO UPDATE SET "
    "state = excluded.state, attempts = excluded.attempts, "
    f"started_at = coalesce({TASKS}.started_at, excluded.started_at), "
    "finished_at = excluded.finished_at, error = excluded.error "
    f"WHERE {TASKS}.owner = excluded.owner"
)


def connect(path: str, lock_timeout: float) -> sqlite3.Connection:
    """Open the journal file, check it, and make sure its tables exist.

    Raises ``FastAPITasksJournalError`` naming the file when it is not a usable
    journal; it is never replaced or repaired here.
    """
    try:
        conn = sqlite3.connect(
            path, timeout=lock_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise _unusable(path, exc, lock_timeout) from exc
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FastAPITasksJournalError(
                f"the task journal {path} was written by a newer fastapi-tasks (schema "
                f"{version}, this version reads {SCHEMA_VERSION}): upgrade fastapi-tasks, "
                "or point journal= at another file"
            )
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            found = "; ".join(str(row[0]) for row in check[:3])
            raise sqlite3.DatabaseError(f"integrity check failed: {found}")
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if version < SCHEMA_VERSION:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
            )
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _unusable(path, exc, lock_timeout) from exc
        raise
    return conn


def _unusable(path: str, exc: sqlite3.Error, lock_timeout: float) -> FastAPITasksJournalError:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        reason = f"it stayed locked by another process for {lock_timeout:g} s"
    else:
        reason = f"{exc}"
    return FastAPITasksJournalError(
        f"cannot open the task journal {path}: {reason}. It was left as it is: if it "
        "is damaged, move it away (keep it to recover its rows) and start again"
    )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Generator[sqlite3.Connection, None, None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclasses.dataclass(frozen=True)
class _Settings:
    path: str
    lease: float
    retention: float | None
    lock_timeout: float
    synchronous: str


class SQLiteJournal:
    """Durable work's journal in one SQLite file (WAL mode), for ``add_tasks(journal=...)``.

    Work scheduled with ``durable=True`` gets a row before it runs; the row is marked
    finished when the work ends. After a crash or a restart, unfinished rows run
    again, once the app's startup completed. Several processes (``uvicorn
    --workers 4``) may share one file: each owns its rows under a lease it renews.

    Args:
        path: The journal file; created if missing. A relative path resolves against
            the working directory when the app starts.
        lease: Seconds a process owns its rows without renewing; it renews every
            ``lease / 4``. Rows of a process that died are taken over once its lease
            expired (at once, at startup, when it ran on this host).
        retention: How long finished rows are kept (for the monitor's history and
            for inspection); ``None`` keeps them forever.
        lock_timeout: Seconds a commit waits for another process's lock before it
            fails.
        synchronous: ``"full"`` syncs every grouped commit to disk: a record
            survives a crash of the machine. ``"normal"`` leaves that to the
            operating system: it survives a crash of the process, not of the machine.

    Raises:
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease: float = 30.0,
        retention: timedelta | None = timedelta(days=7),
        lock_timeout: float = 5.0,
        synchronous: Literal["full", "normal"] = "full",
    ) -> None:
        _check_seconds("lease", lease)
        _check_seconds("lock_timeout", lock_timeout)
        kept = cast("object", retention)  # untyped callers pass anything
        if kept is not None and (not isinstance(kept, timedelta) or kept < timedelta(0)):
            raise ValueError(f"retention must be a timedelta >= 0 or None, got {retention!r}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f'synchronous must be "full" or "normal", got {synchronous!r}')
        self.path = os.fspath(path)
        self.lease = float(lease)
        self.retention = retention
        self.lock_timeout = float(lock_timeout)
        self.synchronous = synchronous
        self.name = self.path
        self._writer: _Writer | None = None
        self._loop: LoopCalls | None = None
        # Durable work of this process between its record and its end, by row id:
        # what to stop if another process takes the rows over.
        self._live: dict[str, Work] = {}
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def __repr__(self) -> str:
        return f"SQLiteJournal({self.path!r}, lease={self.lease:g})"

    # -- on any thread, at schedule() -------------------------------------------

    def prepare(self, work: Work) -> None:
        """Check that the work can be found again and its arguments round-trip."""
        ref = function_ref(work.func)
        arguments = encode_call(work.func, work.args, work.kwargs)
        config = work.config
        options: dict[str, Any] = {
            name: getattr(config, name) for name in _KEPT if name in config.given
        }
        if config.on_error is not None:
            try:
                options["on_error"] = function_ref(config.on_error)
            except TypeError as exc:
                raise TypeError(
                    f"durable work needs an on_error handler that can be found again after "
                    f"a restart: {exc}"
                ) from None
        if config.retry_on is not None:
            kinds = config.retry_on if isinstance(config.retry_on, tuple) else (config.retry_on,)
            options["retry_on"] = [_type_ref(kind) for kind in kinds]
        entry = Entry(
            # Unique across processes and restarts without a system call per task.
            f"{self._prefix}{next(self._counter):x}",
            ref,
            work.name,
            work.mode,
            arguments,
            json.dumps(options, separators=(",", ":")) if options else "{}",
            0,
        )
        entry.scheduled_at = time.time()
        work.entry = entry

    # -- on the loop --------------------------------------------------------------

    def record(self, work: Work, held: bool) -> None:
        entry: Entry = work.entry
        if entry.status in (_SENT, _STORED):
            return
        entry.held = held
        request = work.request
        if request is not None:
            entry.request = f"{request.method or ''} {request.path}".strip()
        entry.status = _SENT
        entry.error = None
        self._live[entry.id] = work
        # The first attempt counts from here: its row is committed before it starts.
        entry.counted = entry.base + max(work.attempts, 1)
        self._queue((entry, _row(entry, "pending", entry.counted, None, None, None)))

    def is_recorded(self, work: Work) -> bool:
        entry: Entry = work.entry
        return entry.status == _STORED

    async def wait_recorded(self, work: Work) -> None:
        entry: Entry = work.entry
        if entry.status == _REFUSED and not entry.held:
            self.record(work, False)  # a retry: try the commit again
        if entry.status == _SENT:
            waiter = entry.waiter
            if waiter is None:
                waiter = entry.waiter = self._loop.new_event()  # type: ignore[union-attr]
            await waiter.wait()
        if entry.status != _STORED:
            raise FastAPITasksJournalError(
                f"durable task {work.name} (id {work.id}) could not be recorded in the task "
                f"journal {self.path}: {entry.error!r}"
            ) from entry.error

    def may_retry(self, work: Work) -> bool:
        entry: Entry = work.entry
        return not (entry.held and entry.status == _REFUSED)

    def note_cancelled(self, work: Work) -> None:
        entry: Entry = work.entry
        entry.cancelled = True

    def note_attempt(self, work: Work) -> None:
        entry: Entry = work.entry
        attempts = entry.base + work.attempts
        if attempts > entry.counted:  # a retry, or the first attempt of a row read back
            entry.counted = attempts
            self._queue((None, _row(entry, "pending", attempts, time.time(), None, None)))

    def adopted(self, work: Work) -> None:
        """Work read back from the journal runs here now."""
        entry: Entry = work.entry
        self._live[entry.id] = work

    def finish(self, work: Work, shutting_down: bool) -> None:
        entry: Entry = work.entry
        self._live.pop(entry.id, None)
        if entry.status == _NEW or entry.status == _REFUSED:
            return  # never recorded: discarded with its request, or its commit failed
        state = work.state
        if state is TaskState.CANCELLED and shutting_down and not entry.cancelled:
            return  # unfinished: it runs again after the restart
        error = None
        exc = work.exception
        if exc is not None:
            error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        row = _row(
            entry, state.value, entry.base + work.attempts, work.started_at, time.time(), error
        )
        self._queue((None, row))

    def _landed(self, entries: list[Entry], error: BaseException | None) -> None:
        """The thread committed (or failed to commit) these rows: wake who waits."""
        status = _REFUSED if error is not None else _STORED
        for entry in entries:
            entry.status = status
            entry.error = error
            waiter = entry.waiter
            if waiter is not None:
                entry.waiter = None
                waiter.set()

    def _lose(self, ids: list[str]) -> None:
        """Another process owns these rows now: stop running them here."""
        for ident in ids:
            work = self._live.pop(ident, None)
            if work is not None:
                work.cancel()

    def _queue(self, op: _Op) -> None:
        self._active().ops.put(op)

    def _active(self) -> _Writer:
        writer = self._writer
        if writer is None:
            raise FastAPITasksJournalError(
                f"the task journal {self.path} is not open: it opens with the app's lifespan"
            )
        return writer

    # -- lifespan -------------------------------------------------------------------

    async def open(self, adopt: Callable[[list[Revived]], None]) -> None:
        if self._writer is not None:
            raise FastAPITasksJournalError(
                f"the task journal {self.path} is already open in this process (two apps "
                "cannot share one SQLiteJournal object; give each its own)"
            )
        settings = _Settings(
            path=self.path,
            lease=self.lease,
            retention=None if self.retention is None else self.retention.total_seconds(),
            lock_timeout=self.lock_timeout,
            synchronous=self.synchronous,
        )
        writer = _Writer(settings, adopt, self._landed, self._lose)
        await anyio.to_thread.run_sync(writer.open)
        self._writer = writer

    def attach(self, loop: LoopCalls) -> None:
        self._loop = loop
        self._active().start(loop)

    def resume(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.resume()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await anyio.to_thread.run_sync(writer.stop)


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")


def _type_ref(kind: type[BaseException]) -> str:
    ref = f"{kind.__module__}:{kind.__qualname__}"
    try:
        found = resolve(ref)
    except ImportError:
        found = None
    if found is not kind:
        raise TypeError(
            f"durable work needs retry_on types that can be found again after a restart: "
            f"{kind.__qualname__} is not reachable as {ref}; define it at module level"
        )
    return ref


_STOP: _Op = (None, ())


class _Writer:
    """The thread that owns the connection, and what only it touches."""

    def __init__(
        self,
        settings: _Settings,
        adopt: Callable[[list[Revived]], None],
        landed: Callable[[list[Entry], BaseException | None], None],
        lose: Callable[[list[str]], None],
    ) -> None:
        self.settings = settings
        self.adopt = adopt
        self.landed = landed
        self.lose = lose
        self.ops: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.conn: sqlite3.Connection | None = None
        self.thread: threading.Thread | None = None
        self.claimed: list[Revived] = []  # taken at startup, handed over by resume()
        self.mine: set[str] = set()  # ids of unfinished rows this process committed or took
        self.next_purge = 0.0

    # -- startup and shutdown (called from a worker thread of anyio) ----------------

    def open(self) -> None:
        settings = self.settings
        # Against the working directory of this moment, the app's startup.
        self.settings = settings = dataclasses.replace(
            settings, path=os.path.abspath(settings.path)
        )
        conn = connect(settings.path, settings.lock_timeout)
        try:
            conn.execute(f"PRAGMA synchronous={settings.synchronous.upper()}")
            now = time.time()
            with _transaction(conn):
                self.register(conn, now)
                self.claimed = self.claim(conn, now)
            self.purge(conn, now)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _unusable(settings.path, exc, settings.lock_timeout) from exc
            raise
        self.conn = conn

    def start(self, loop: LoopCalls) -> None:
        """Start the thread: from now on it reports to ``loop``."""
        self.thread = threading.Thread(
            target=self.run, args=(loop,), name="fastapi-tasks-journal", daemon=True
        )
        self.thread.start()

    def resume(self) -> None:
        claimed, self.claimed = self.claimed, []
        if claimed:
            self.adopt(claimed)

    def stop(self) -> None:
        thread = self.thread
        if thread is None:  # opened, never started: nothing was written
            self.release(self.conn)  # type: ignore[arg-type]
            self.conn.close()  # type: ignore[union-attr]
            return
        self.ops.put(_STOP)
        thread.join()

    # -- the thread ---------------------------------------------------------------

    def run(self, loop: LoopCalls) -> None:
        conn: sqlite3.Connection = self.conn  # type: ignore[assignment]
        interval = self.settings.lease / 4
        next_tick = time.monotonic() + interval
        batch: list[_Op] = []
        write_by: float | None = None  # the latest moment queued changes are written
        wrote = 0.0  # when the last commit ended
        stopping = False
        while True:
            deadline = next_tick if write_by is None else min(next_tick, write_by)
            try:
                op: _Op | None = self.ops.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                op = None
            if op is not None and time.monotonic() - wrote < BUSY:
                # Commits follow each other: let a little more queue up for this one.
                # The event loop has the interpreter to itself meanwhile.
                time.sleep(LINGER)
            urgent = False
            # Everything queued meanwhile goes into the same commit.
            while op is not None:
                if op is _STOP:
                    stopping = True
                else:
                    batch.append(op)
                    urgent = urgent or op[0] is not None
                try:
                    op = self.ops.get_nowait()
                except queue.Empty:
                    op = None
            now = time.monotonic()
            if batch and write_by is None:
                write_by = now + LAZY_WRITES
            # New rows are written at once (a response or an attempt waits for them);
            # attempts and final states wait for them, or at most LAZY_WRITES: under
            # load they ride along, and a commit is saved per task.
            if batch and (urgent or stopping or now >= write_by):  # type: ignore[operator]
                self.write(conn, batch, loop)
                wrote = time.monotonic()
                batch = []
                write_by = None
            if stopping:
                break
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + interval
                self.tick(conn, loop)
        self.release(conn)
        conn.close()

    def write(self, conn: sqlite3.Connection, batch: list[_Op], loop: LoopCalls) -> None:
        rows = [row for _, row in batch]
        error: BaseException | None = None
        try:
            conn.execute(_UPSERT, (self.owner, json.dumps(rows, separators=(",", ":"))))
        except sqlite3.Error as exc:
            error = exc
            logger.error(
                "the task journal %s could not commit %d change(s): %r",
                self.settings.path,
                len(batch),
                exc,
            )
        else:
            mine = self.mine
            for row in rows:
                if row[6] == "pending":
                    mine.add(row[0])
                else:
                    mine.discard(row[0])
        landed = [entry for entry, _ in batch if entry is not None]
        if landed:
            loop.call_soon_threadsafe(self.landed, landed, error)

    def tick(self, conn: sqlite3.Connection, loop: LoopCalls) -> None:
        """Renew the lease, take over dead processes' rows, purge old ones."""
        settings = self.settings
        now = time.time()
        lost: list[str] = []
        try:
            with _transaction(conn):
                renewed = conn.execute(
                    f"UPDATE {OWNERS} SET lease_until = ? WHERE owner = ?",
                    (now + settings.lease, self.owner),
                ).rowcount
                if not renewed:
                    # Another process found our lease expired (we stalled) and took
                    # our rows: stop what we lost, and own what is still ours.
                    self.register(conn, now)
                    still = {
                        row[0]
                        for row in conn.execute(
                            f"SELECT id FROM {TASKS} WHERE owner = ? AND state = 'pending'",
                            (self.owner,),
                        )
                    }
                    lost = sorted(self.mine - still)
                    self.mine &= still
                claimed = self.claim(conn, now)
            self.purge(conn, now)
        except sqlite3.Error as exc:
            logger.warning(
                "the task journal %s could not renew this process's lease: %r",
                settings.path,
                exc,
            )
            return
        if lost:
            logger.error(
                "the task journal %s: this process held no lease for more than %g s, and "
                "another process took over %d of its durable task(s); they are stopped here",
                settings.path,
                settings.lease,
                len(lost),
            )
            loop.call_soon_threadsafe(self.lose, lost)
        if claimed:
            loop.call_soon_threadsafe(self.adopt, claimed)

    def register(self, conn: sqlite3.Connection, now: float) -> None:
        """This process's owner row, with a fresh lease (inside the caller's transaction)."""
        pid = os.getpid()
        conn.execute(
            f"INSERT INTO {OWNERS} (owner, host, pid, identity, lease_until) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.owner, HOST, pid, process_identity(pid) or "", now + self.settings.lease),
        )

    def claim(self, conn: sqlite3.Connection, now: float) -> list[Revived]:
        """Take the unfinished rows nobody alive owns; read them back as runnable work."""
        dead: list[str] = []
        for owner, host, pid, identity, lease_until in conn.execute(
            f"SELECT owner, host, pid, identity, lease_until FROM {OWNERS} WHERE owner != ?",
            (self.owner,),
        ):
            if lease_until < now or (host == HOST and process_identity(pid) != identity):
                dead.append(owner)
        if dead:
            conn.executemany(f"DELETE FROM {OWNERS} WHERE owner = ?", [(o,) for o in dead])
        rows = conn.execute(
            f"SELECT id, func, name, mode, arguments, options, attempts, scheduled_at, "
            f"request FROM {TASKS} WHERE state = 'pending' AND (owner IS NULL OR owner NOT IN "
            f"(SELECT owner FROM {OWNERS}))"
        ).fetchall()
        if not rows:
            return []
        conn.executemany(
            f"UPDATE {TASKS} SET owner = ? WHERE id = ?", [(self.owner, row[0]) for row in rows]
        )
        self.mine.update(row[0] for row in rows)
        return [revive(row) for row in rows]

    def purge(self, conn: sqlite3.Connection, now: float) -> None:
        retention = self.settings.retention
        if retention is None or now < self.next_purge:
            return
        self.next_purge = now + RETENTION_EVERY
        with _transaction(conn):
            conn.execute(
                f"DELETE FROM {TASKS} WHERE state != 'pending' AND finished_at < ?",
                (now - retention,),
            )

    def release(self, conn: sqlite3.Connection) -> None:
        """Give unfinished rows back at a clean shutdown: the next process takes them at once."""
        try:
            with _transaction(conn):
                conn.execute(
                    f"UPDATE {TASKS} SET owner = NULL WHERE owner = ? AND state = 'pending'",
                    (self.owner,),
                )
                conn.execute(f"DELETE FROM {OWNERS} WHERE owner = ?", (self.owner,))
        except sqlite3.Error as exc:
            logger.warning(
                "the task journal %s could not give back this process's unfinished rows "
                "(they are taken over once its lease expires): %r",
                self.settings.path,
                exc,
            )


def _unavailable() -> None:
    """Stands in for a function that could not be found again (never called)."""


def revive(row: tuple[Any, ...]) -> Revived:
    """A row read back: its function imported and its arguments restored, or why not."""
    ident, ref, name, mode, arguments, options_text, attempts, scheduled_at, request = row
    entry = Entry(ident, ref, name, mode, arguments, options_text, attempts)
    entry.status = _STORED
    entry.request = request
    entry.scheduled_at = scheduled_at
    options: dict[str, Any] = {"name": name, "durable": True}
    try:
        stored: dict[str, Any] = json.loads(options_text)
        func = resolve(ref)
        for key in _KEPT:
            if key in stored:
                options[key] = stored[key]
        if "on_error" in stored:
            options["on_error"] = resolve(stored["on_error"])
        if "retry_on" in stored:
            options["retry_on"] = tuple(resolve(kind) for kind in stored["retry_on"])
        # The interrupted attempt counts: what is left is retries minus attempts used.
        options["retries"] = max(0, (options.get("retries") or 0) - attempts)
        args, kwargs = decode_call(func, arguments)
    except (ImportError, TypeError, ValueError) as exc:
        return Revived(entry, _unavailable, (), {}, options, exc)
    return Revived(entry, func, args, kwargs, options, None)
