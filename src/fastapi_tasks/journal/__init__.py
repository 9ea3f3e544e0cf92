"""Durable work on one machine: an SQLite journal.

``add_tasks(app, journal="tasks.db")`` records work scheduled with
``task(durable=True)`` before it runs, and runs what did not finish again after a
crash or a restart. ``python -m fastapi_tasks.journal`` lists and retries rows.
"""

from ._sqlite import SQLiteJournal as SQLiteJournal

__all__ = ["SQLiteJournal"]
