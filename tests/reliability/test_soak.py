"""Soak, in process on asyncio and trio: many tasks through one manager, many requests
through the app; memory and the object count stay flat, and no finished handle is kept.

Every ``SIZES.soak_batch`` tasks (or requests) the test joins and samples: resident
memory, the garbage collector's object count and the ``Task`` objects still alive. After
a warm-up (the first fifth of the run), RSS may grow by less than 5% and the object count
by a small constant; no ``Task`` may be alive after a join (the test keeps none).
Failing work is logged as usual and every record formatted, then dropped, so that the
test's own log capture does not grow.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import pytest
from fastapi import FastAPI

from fastapi_tasks import Task, TaskManager, Tasks, add_tasks

from .harness import SIZES, record, rss_bytes
from .inprocess import lifespan, request

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

RSS_GROWTH = 0.05
OBJECT_GROWTH = 1_000
"""Objects the count may grow by after warm-up: caches that fill once (type caches,
interned strings, a dict's table sized to the largest batch)."""
JOIN_SECONDS = 120
CONCURRENCY = 100


@dataclass
class Sample:
    done: int
    rss: int
    objects: int
    tasks_alive: int


def ours(obj: object) -> bool:
    """A handle of this module's work (earlier tests in the process may keep their own)."""
    if not issubclass(type(obj), Task):
        return False
    func = getattr(obj, "func", None)
    return func in WORK or isinstance(func, FailsOnce)


def sample(done: int) -> Sample:
    gc.collect()
    objects = gc.get_objects()
    alive = sum(1 for obj in objects if ours(obj))
    return Sample(done, rss_bytes(), len(objects), alive)


class FormatAndDrop(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        self.records = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.formatter.format(record)  # tracebacks included
        self.records += 1
        return False


@pytest.fixture
def formatted_logs() -> Iterator[FormatAndDrop]:
    logger = logging.getLogger("fastapi_tasks")
    dropper = FormatAndDrop()
    logger.addFilter(dropper)
    try:
        yield dropper
    finally:
        logger.removeFilter(dropper)


def check_flat(name: str, backend: str, samples: list[Sample]) -> None:
    # Warm after a fifth of the run, and in short runs (few samples) not before the
    # middle: the first few thousand tasks still grow the allocator's arenas.
    warm = samples[max(1, len(samples) // 5, min(len(samples) // 2, 10)) - 1]
    last = samples[-1]
    growth = last.rss / warm.rss - 1
    record(
        name,
        backend=backend,
        done=last.done,
        rss_warm_mb=warm.rss / 2**20,
        rss_last_mb=last.rss / 2**20,
        rss_growth=growth,
        objects_warm=warm.objects,
        objects_last=last.objects,
        tasks_alive=max(s.tasks_alive for s in samples),
    )
    assert all(s.tasks_alive == 0 for s in samples), [s.tasks_alive for s in samples]
    assert growth < RSS_GROWTH, f"RSS {warm.rss} -> {last.rss} after {last.done}"
    assert last.objects - warm.objects <= OBJECT_GROWTH, f"objects {warm.objects} -> {last.objects}"


async def noop() -> None:
    pass


def noop_sync() -> None:
    pass


async def fail() -> None:
    raise ValueError("one in a hundred fails")


class FailsOnce:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("the first attempt fails")


WORK: tuple[object, ...] = (noop, noop_sync, fail)


def check_stats(manager: TaskManager, scheduled: int, failed: int, retries: int) -> None:
    stats = manager.stats
    assert stats.pending == stats.running == stats.cancelled == stats.discarded == 0
    assert stats.scheduled == scheduled
    assert stats.failed == failed
    assert stats.succeeded == scheduled - failed
    assert stats.retries == retries


async def test_soak_tasks(anyio_backend: str, formatted_logs: FormatAndDrop) -> None:
    app = FastAPI()
    manager = add_tasks(app)
    limiter = anyio.CapacityLimiter(8)
    retried = manager.task(retries=1, retry_delay=0)
    limited = manager.task(timeout=30, limiter=limiter)
    batches = SIZES.soak_tasks // SIZES.soak_batch
    samples: list[Sample] = []
    failed = retries = 0
    async with lifespan(app):
        for batch in range(batches):
            for index in range(SIZES.soak_batch):
                kind = index % 100
                if kind == 0:
                    manager.schedule(fail)
                    failed += 1
                elif kind == 1:
                    retried.schedule(FailsOnce())
                    retries += 1
                elif kind == 2:
                    manager.schedule(noop_sync)
                elif kind == 3:
                    limited.schedule(noop)
                else:
                    manager.schedule(noop)
            await manager.join(JOIN_SECONDS)
            samples.append(sample((batch + 1) * SIZES.soak_batch))
        check_stats(manager, batches * SIZES.soak_batch, failed, retries)
    assert formatted_logs.records >= failed + retries
    check_flat("soak-tasks", anyio_backend, samples)


@pytest.mark.parametrize(
    "anyio_backend",
    [
        "asyncio",
        "trio",
    ],
)
async def test_soak_requests(anyio_backend: str) -> None:
    app = FastAPI()
    manager = add_tasks(app)

    @app.get("/")
    async def endpoint(tasks: Tasks) -> None:
        tasks.schedule(noop)
        tasks.after_route.schedule(noop)
        tasks.after_response.schedule(noop)

    per_worker = SIZES.soak_batch // CONCURRENCY

    async def client(state: dict[str, object]) -> None:
        for _ in range(per_worker):
            assert await request(app, state, "/") == 200

    batches = SIZES.soak_requests // SIZES.soak_batch
    samples: list[Sample] = []
    async with lifespan(app) as state:
        for batch in range(batches):
            async with anyio.create_task_group() as group:
                for _ in range(CONCURRENCY):
                    group.start_soon(client, state)
            await manager.join(JOIN_SECONDS)
            samples.append(sample((batch + 1) * per_worker * CONCURRENCY))
        check_stats(manager, 3 * batches * per_worker * CONCURRENCY, 0, 0)
    check_flat("soak-requests", anyio_backend, samples)
