"""Distributed work: the same ``Tasks`` calls hand jobs to taskiq workers over Redis.

Run it (from the repository root, with ``fastapi-tasks[taskiq]`` installed and a
``redis-server`` listening on REDIS_URL, default redis://127.0.0.1:6379):

    PYTHONPATH=examples taskiq worker distributed:broker     # one or more workers
    PYTHONPATH=examples uvicorn distributed:app              # the web app
    curl -X POST localhost:8000/orders/42

``charge_card`` runs in the web process (a plain function); ``send_receipt`` is a
taskiq task: the order's endpoint returns only once the job is in Redis (after-route),
and a worker runs it. If Redis refuses the job, the client gets a 503.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from redis.asyncio import Redis
from taskiq_redis import RedisStreamBroker

from fastapi_tasks import Tasks, add_tasks

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

# Acknowledged after the job ran: at-least-once. A job whose worker died is delivered
# again once it has been pending idle_timeout milliseconds (here 60 s, default 10 min)
# and a live worker receives new messages. Keep jobs shorter than idle_timeout.
broker = RedisStreamBroker(REDIS_URL, queue_name="orders", idle_timeout=60_000)


@broker.task(task_name="orders:send_receipt")
async def send_receipt(order_id: int) -> None:
    """Runs on a worker. Idempotent: a receipt already sent is not sent twice."""
    async with Redis(connection_pool=broker.connection_pool) as redis:
        if await redis.sadd("receipts:sent", order_id):
            await redis.rpush("receipts", f"receipt for order {order_id}")


def charge_card(order_id: int) -> None:
    """Runs in the web process, in a worker thread."""


app = FastAPI()
add_tasks(app, broker=broker)


@app.post("/orders/{order_id}")
async def create_order(order_id: int, tasks: Tasks) -> dict[str, object]:
    tasks.schedule(charge_card, order_id)
    tasks.after_route.schedule(send_receipt, order_id)
    return {"order_id": order_id, "status": "accepted"}
