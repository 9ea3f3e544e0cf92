"""The monitor's view of the app's journal: durable work of every process, across restarts.

The journal file is the only place that knows what other worker processes ran, and
what ran before the last restart. Reading it costs a few queries on a read-only
connection, so the view reads it off the event loop, at most once every ``INTERVAL``
seconds per app however many pages and scripts ask, and only when someone asks.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import anyio
import anyio.to_thread

from ..journal._rows import JournalRow, count_by_state, read_rows

__all__ = ["JournalView"]

INTERVAL = 2.0
"""Seconds a read of the journal is served from memory: one read per interval at most."""
FAILURES = 50
"""Failed rows listed with their traceback."""
TRACEBACK_CHARS = 8000
"""Longest traceback kept, from its end (where the error is)."""
TEXT_CHARS = 500
"""Longest error line or argument text kept."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _last_line(text: str | None) -> str | None:
    if text is None:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    return _clip(lines[-1].strip(), TEXT_CHARS) if lines else None


def _process(owner: str | None) -> str | None:
    """``host:pid`` of an owner ``host:pid:token``: the token changes at every start."""
    return None if owner is None else owner.rpartition(":")[0] or owner


def _finished_first(row: JournalRow) -> float:
    return -(row.finished_at or 0.0)


class JournalView:
    """What the monitor shows of one app's journal, read at most once per ``INTERVAL``."""

    def __init__(self, path: str, history: int, show_arguments: bool) -> None:
        self.path = path
        self.history = history
        self.show_arguments = show_arguments
        self.reads = 0
        """Reads of the file so far."""
        self.version = 0
        """Changes seen so far: a stream sends the section again only when it moved."""
        self._section: dict[str, Any] | None = None
        self._read_at = -math.inf  # time.monotonic() of the last read
        self._lock = anyio.Lock()
        self._this_process = f"{socket.gethostname()}:{os.getpid()}"

    async def section(self) -> dict[str, Any]:
        """The journal's counts and recent rows, read again once ``INTERVAL`` has passed."""
        section = self._section
        if section is not None and self._fresh():
            return section
        async with self._lock:
            section = self._section
            if section is not None and self._fresh():
                return section  # who waited on the lock gets the read just made
            fresh = await anyio.to_thread.run_sync(self.read)
            self._read_at = time.monotonic()
            self.reads += 1
            if section is None or _content(fresh) != _content(section):
                self.version += 1
            self._section = fresh
            return fresh

    def _fresh(self) -> bool:
        return time.monotonic() - self._read_at < INTERVAL

    def read(self) -> dict[str, Any]:
        """Read the file now (in a worker thread): counts, finished rows, failures."""
        read_at = time.time()
        result: dict[str, Any] = {
            "path": self.path,
            "read_at": read_at,
            "interval": INTERVAL,
            "limit": self.history,
            "error": None,
            "counts": None,
            "finished": [],
            "failures": [],
        }
        try:
            counts = count_by_state(self.path)
            # finished_since=0: only rows with a finish time, i.e. finished ones.
            finished = read_rows(self.path, limit=self.history, finished_since=0.0)
            failed = read_rows(self.path, state="failed", limit=FAILURES)
        except Exception as exc:  # the page shows it; the file is never the page's failure
            message = str(exc)
            result["error"] = message if message else type(exc).__qualname__
            return result
        finished.sort(key=_finished_first)
        failed.sort(key=_finished_first)
        result["counts"] = counts
        result["finished"] = [self._summary(row) for row in finished]
        result["failures"] = [self._failure(row) for row in failed]
        return result

    def _summary(self, row: JournalRow) -> dict[str, Any]:
        process = _process(row.owner)
        summary: dict[str, Any] = {
            "id": row.id,
            "name": row.name,
            "func": row.func,
            "mode": row.mode,
            "state": row.state,
            "attempts": row.attempts,
            "owner": row.owner,
            "process": process,
            "this_process": process == self._this_process,
            "scheduled": row.scheduled_at,
            "started": row.started_at,
            "finished": row.finished_at,
            "request": row.request,
            "error": _last_line(row.error),
        }
        if self.show_arguments:
            summary["arguments"] = _clip(row.arguments, TEXT_CHARS)
        return summary

    def _failure(self, row: JournalRow) -> dict[str, Any]:
        failure = self._summary(row)
        text = row.error
        if text is not None and len(text) > TRACEBACK_CHARS:
            text = "\N{HORIZONTAL ELLIPSIS}" + text[-TRACEBACK_CHARS:]
        failure["traceback"] = text
        return failure


def _content(section: dict[str, Any]) -> tuple[Any, ...]:
    """What a reader sees change: everything but when it was read."""
    return (section["error"], section["counts"], section["finished"], section["failures"])
