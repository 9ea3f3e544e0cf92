"""Load on a real server: every task accounted for, figures beside ``BackgroundTasks``.

Per server, each round serves the fastapi-tasks app and then the same app on Starlette's
``BackgroundTasks``, to the load client in a process of its own (200 connections,
``SIZES.load_requests`` requests; three pieces of work each, async and sync, some with
options). Afterwards ``/stats?join=`` waits for the work and reports: the manager's
counters add up (SPEC section 7), the work's own record of its runs equals
``succeeded``, nothing failed, nothing was cancelled or discarded. Throughput, latency
and the start delay of the first piece of work (schedule to start) go to the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .harness import SIZES, forbidden_lines, record
from .servers import BACKGROUND_APP, SERVERS, TASKS_APP, load_client, serve

pytestmark = pytest.mark.reliability

JOIN_SECONDS = 60
APPS = {"fastapi-tasks": TASKS_APP, "BackgroundTasks": BACKGROUND_APP}


def check_accounting(app: str, report: dict[str, Any], requests: int) -> None:
    assert report["requests"] == requests
    assert report["scheduled"] == 3 * requests
    assert report["runs"] == {
        "immediate": requests,
        "after_route": requests,
        "after_response": requests,
    }
    if app != "fastapi-tasks":
        return
    stats = report["stats"]
    assert stats["pending"] == stats["running"] == 0
    assert stats["scheduled"] == (
        stats["pending"]
        + stats["running"]
        + stats["succeeded"]
        + stats["failed"]
        + stats["cancelled"]
        + stats["discarded"]
    )
    assert stats["scheduled"] == report["scheduled"]
    assert stats["succeeded"] == report["recorded"]
    assert stats["failed"] == stats["cancelled"] == stats["discarded"] == 0


@pytest.mark.parametrize("kind", SERVERS)
def test_load_every_task_accounted_for(kind: str, tmp_path: Path) -> None:
    requests = SIZES.load_requests
    for round_number in range(SIZES.load_rounds):
        for app, target in APPS.items():
            with serve(kind, target, tmp_path / f"{app}-{round_number}.log") as server:
                with load_client(
                    server.port, requests=requests, connections=SIZES.load_connections
                ) as client:
                    load = client.result()
                status, report = server.get(
                    f"/stats?join={JOIN_SECONDS}", timeout=JOIN_SECONDS + 10
                )
            assert server.exit is not None
            output = server.output()

            assert load["errors"] == load["timed_out"] == 0, load
            assert load["statuses"] == {"200": requests}
            assert status == 200, output
            check_accounting(app, report, requests)
            assert server.exit.returncode in (0, -15), output
            assert forbidden_lines(output, tracebacks=True) == []

            stats: dict[str, int] = report["stats"] or {}
            record(
                "load",
                server=kind,
                app=app,
                round=round_number,
                connections=SIZES.load_connections,
                requests=requests,
                rps=load["rps"],
                p50=load["p50"],
                p99=load["p99"],
                start_delay_p50=report["delay"]["p50"],
                start_delay_p99=report["delay"]["p99"],
                scheduled=stats.get("scheduled", report["scheduled"]),
                succeeded=stats.get("succeeded"),
                recorded=report["recorded"],
                lost=report["scheduled"] - report["recorded"],
            )
