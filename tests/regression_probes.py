"""Scenarios that the regression tests also run in a subprocess of their own.

A subprocess is what some rules need: asyncio's debug mode
(``PYTHONASYNCIODEBUG=1``) from the start, or an interpreter that has to exit.
Run one with ``python -m tests.regression_probes SCENARIO BACKEND`` from the
project root; it exits with 0 only if every check of the scenario held.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable

import anyio
from fastapi import FastAPI

from fastapi_tasks import Task, Tasks, TaskState, add_tasks

from .conftest import serving

WAIT = 5.0
"""Seconds any single wait may take before the scenario fails."""


async def cancel_running_task_from_a_thread() -> None:
    """R1: a ``def`` endpoint (a worker thread) cancels a task an earlier request started.

    The task sleeps "forever", as a poller would; its sleep is long but finite, so
    a cancellation that never arrives fails the run after a while instead of
    holding the shutdown (and the test suite) forever.
    """
    app = FastAPI()
    manager = add_tasks(app)
    handles: dict[str, Task[None]] = {}
    started = anyio.Event()

    async def poll() -> None:
        started.set()
        await anyio.sleep(2 * WAIT)  # meant to be cancelled long before it ends

    @app.post("/start")
    async def start(tasks: Tasks) -> None:
        handles["poller"] = tasks.schedule(poll)

    @app.post("/stop")
    def stop() -> bool:
        return handles["poller"].cancel()

    with anyio.fail_after(4 * WAIT):  # the lifespan's shutdown included
        async with serving(app) as client:
            assert (await client.post("/start")).status_code == 200
            with anyio.fail_after(WAIT):
                await started.wait()
            response = await client.post("/stop")
            assert response.json() is True, response.text
            with anyio.fail_after(WAIT):
                await handles["poller"].wait()
                await manager.join()
    assert handles["poller"].state is TaskState.CANCELLED, handles["poller"].state


async def abandon_a_sync_thread() -> None:
    """M2: sync work that outlives its timeout is abandoned; the lifespan ends at once."""
    app = FastAPI()
    manager = add_tasks(app)
    with anyio.fail_after(3 * WAIT):
        async with serving(app):
            task = manager.task(timeout=0.2).schedule(time.sleep, 60)
            with anyio.fail_after(WAIT):
                await task.wait()
    assert task.state is TaskState.FAILED, task.state
    assert isinstance(task.exception, TimeoutError), repr(task.exception)


SCENARIOS: dict[str, Callable[[], Awaitable[None]]] = {
    "cancel-running-task-from-a-thread": cancel_running_task_from_a_thread,
    "abandon-a-sync-thread": abandon_a_sync_thread,
}


def main(argv: list[str]) -> None:
    scenario, backend = argv
    anyio.run(SCENARIOS[scenario], backend=backend)
    print(f"{scenario} on {backend}: ok")


if __name__ == "__main__":
    main(sys.argv[1:])
