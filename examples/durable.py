"""Durable work: orders whose receipts survive a crash of the server.

Run it with ``uvicorn examples.durable:app`` (from the repository root), place an
order with ``curl -X POST localhost:8000/orders -H 'content-type: application/json'
-d '{"id": 1, "email": "ada@example.com", "total": "12.50"}'``, and kill the server
while the receipt is being sent: the next start sends it again.

Environment: ``DURABLE_JOURNAL`` (the journal file, ``tasks.db``), ``DURABLE_OUTBOX``
(where "sent" receipts are appended, ``outbox.txt``), ``DURABLE_SEND_SECONDS``
(how long sending a receipt takes, ``0.2``), ``DURABLE_LEASE`` (seconds, ``30``).
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import anyio
from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_tasks import Tasks, add_tasks
from fastapi_tasks.journal import SQLiteJournal

OUTBOX = Path(os.environ.get("DURABLE_OUTBOX", "outbox.txt"))
SEND_SECONDS = float(os.environ.get("DURABLE_SEND_SECONDS", "0.2"))


class Order(BaseModel):
    id: int
    email: str
    total: Decimal


async def send_receipt(order: Order, kind: str) -> None:
    """Stands for a call to a mail service: slow, and must not be lost."""
    await anyio.sleep(SEND_SECONDS)
    line = f"{kind} {order.id} {order.email} {order.total} pid={os.getpid()}\n"
    # One write() of a short line with O_APPEND: lines of several processes never mix.
    fd = os.open(OUTBOX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


app = FastAPI()
add_tasks(
    app,
    journal=SQLiteJournal(
        os.environ.get("DURABLE_JOURNAL", "tasks.db"),
        lease=float(os.environ.get("DURABLE_LEASE", "30")),
    ),
)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/orders")
async def place_order(order: Order, tasks: Tasks) -> dict[str, int]:
    durable = tasks.task(durable=True)
    # On disk before the response starts: the client never sees 200 for a lost receipt.
    durable.schedule(send_receipt, order, "receipt")
    tasks.after_route.task(durable=True).schedule(send_receipt, order, "invoice")
    # Recorded right after the response was sent (a window of milliseconds).
    tasks.after_response.task(durable=True).schedule(send_receipt, order, "survey")
    return {"order": order.id}
