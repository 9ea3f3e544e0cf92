"""Distributed mode's costs, against a real ``redis-server``; ``scripts/bench`` runs it.

- Enqueue cost: one job enqueued and awaited through our API
  (``await manager.schedule(job, i).wait()``) against ``await job.kiq(i)`` on the same
  broker and Redis. Target: at most 1.1x.
- The latency an after-route job adds to a request: the same endpoint with and without
  ``tasks.after_route.schedule(job, i)`` (the response waits for the enqueue).

Rounds interleave the variants so a shared machine's drift spreads over all of them;
the figure is the median per-operation time over rounds. Prints a Markdown section,
and appends it to ``docs/benchmarks.md`` with ``--append``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from taskiq_redis import RedisStreamBroker

from fastapi_tasks import Tasks, add_tasks, get_task_manager
from fastapi_tasks.testing import run_lifespan

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"
HEADING = "## Distributed mode (taskiq on Redis)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _per_op(operation: Callable[[int], Awaitable[None]], count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        await operation(i)
    return (time.perf_counter() - started) / count * 1e6


async def measure(url: str, rounds: int, count: int) -> dict[str, float]:
    broker = RedisStreamBroker(url, queue_name="bench", maxlen=10_000)

    async def job(n: int) -> None:
        """Never run: no worker reads the bench queue."""

    task = broker.register_task(job, task_name="bench:job")
    app = FastAPI()
    add_tasks(app, broker=broker)

    @app.get("/plain")
    async def plain() -> str:
        return "ok"

    @app.get("/job/{n}")
    async def with_job(n: int, tasks: Tasks) -> str:
        tasks.after_route.schedule(task, n)
        return "ok"

    samples: dict[str, list[float]] = {"kiq": [], "schedule": [], "plain": [], "after_route": []}
    async with run_lifespan(app) as state:
        manager = get_task_manager(app)

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = state.copy()
            await app(scope, receive, send)

        transport = httpx2.ASGITransport(app=with_state)
        client = httpx2.AsyncClient(transport=transport, base_url="http://bench")
        async with client:

            async def kiq(i: int) -> None:
                await task.kiq(i)

            async def schedule(i: int) -> None:
                await manager.schedule(task, i).wait()

            async def get_plain(i: int) -> None:
                await client.get("/plain")

            async def get_job(i: int) -> None:
                await client.get(f"/job/{i}")

            variants = {
                "kiq": kiq,
                "schedule": schedule,
                "plain": get_plain,
                "after_route": get_job,
            }
            for _ in range(2):  # warm up: connections, code paths
                for operation in variants.values():
                    await _per_op(operation, count // 4 or 1)
            for round_ in range(rounds):
                names = list(variants)
                names = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in names:
                    samples[name].append(await _per_op(variants[name], count))
    return {name: statistics.median(values) for name, values in samples.items()}


def render(figures: dict[str, float], rounds: int, count: int) -> str:
    ratio = figures["schedule"] / figures["kiq"]
    added = figures["after_route"] - figures["plain"]
    verdict = "met" if ratio <= 1.1 else "NOT met"
    return f"""{HEADING}

Against a `redis-server` on loopback, `taskiq_redis.RedisStreamBroker`, no worker reading;
median over {rounds} interleaved rounds of {count} operations each (wall time: it swings
on a shared machine).

| figure | µs per operation |
|---|---|
| `await job.kiq(i)` | {figures["kiq"]:.1f} |
| `await manager.schedule(job, i).wait()` | {figures["schedule"]:.1f} |
| ratio (target at most 1.1x, {verdict}) | {ratio:.2f}x |
| request, no task | {figures["plain"]:.1f} |
| request with one after-route job (waits for the enqueue) | {figures["after_route"]:.1f} |
| latency an after-route job adds | {added:.1f} |
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--append", action="store_true", help="append to docs/benchmarks.md")
    options = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server is not installed: distributed benchmark skipped")
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = f"redis://127.0.0.1:{port}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)  # the server is starting; bounded by the deadline
            figures = asyncio.run(measure(url, options.rounds, options.count))
        finally:
            process.kill()
            process.wait(10)
    section = render(figures, options.rounds, options.count)
    print(section)
    if options.append:
        text = REPORT.read_text(encoding="utf-8")
        if HEADING in text:
            text = text[: text.index(HEADING)].rstrip() + "\n"
        REPORT.write_text(text + "\n" + section, encoding="utf-8")


if __name__ == "__main__":
    main()
