"""The figures of a reliability run as Markdown: ``python -m tests.reliability.report FILE``.

``FILE`` is the results file ``scripts/reliability`` collects (one JSON object a line,
written by ``harness.record``); the tables are the ones ``docs/reliability.md`` shows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def table(headers: Sequence[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


LOAD_HEADERS = [
    "server",
    "round",
    "requests per app",
    "req/s",
    "latency p50",
    "latency p99",
    "start delay p50",
    "start delay p99",
    "tasks",
    "recorded runs",
    "lost",
]
APPS = ("fastapi-tasks", "BackgroundTasks")


def load_rows(load: list[dict[str, Any]]) -> list[list[object]]:
    """One row per server and round, the two apps side by side in each cell."""
    rounds: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for entry in load:
        rounds.setdefault((entry["server"], entry["round"]), {})[entry["app"]] = entry

    def pair(apps: dict[str, dict[str, Any]], show: Callable[[dict[str, Any]], str]) -> str:
        return " / ".join(show(apps[app]) if app in apps else "none" for app in APPS)

    rows: list[list[object]] = []
    for (server, round_number), apps in rounds.items():
        rows.append(
            [
                server,
                round_number,
                max(entry["requests"] for entry in apps.values()),
                pair(apps, lambda e: f"{e['rps']:.0f}"),
                pair(apps, lambda e: ms(e["p50"])),
                pair(apps, lambda e: ms(e["p99"])),
                pair(apps, lambda e: ms(e["start_delay_p50"])),
                pair(apps, lambda e: ms(e["start_delay_p99"])),
                pair(apps, lambda e: str(e["scheduled"])),
                pair(apps, lambda e: str(e["recorded"])),
                pair(apps, lambda e: str(e["lost"])),
            ]
        )
    return rows


def render(entries: list[dict[str, Any]]) -> str:
    def of(test: str) -> list[dict[str, Any]]:
        return [entry for entry in entries if entry["test"] == test]

    parts: list[str] = []
    if load := of("load"):
        parts.append("### Load (each cell: fastapi-tasks / BackgroundTasks)\n")
        parts.append(table(LOAD_HEADERS, load_rows(load)))
    if sigterm := of("sigterm"):
        parts.append("\n### SIGTERM under load\n")
        parts.append(
            table(
                [
                    "server",
                    "run",
                    "scheduled",
                    "began",
                    "ended",
                    "cancelled running",
                    "never began",
                    "shielded ended/scheduled",
                    "final line (completed/failed/cancelled/discarded)",
                    "exit code",
                    "SIGTERM to exit",
                    "lost",
                ],
                [
                    [
                        e["server"],
                        e["run"],
                        e["scheduled"],
                        e["began"],
                        e["ended"],
                        e["cancelled_running"],
                        e["never_began"],
                        f"{e['shielded_ended']}/{e['shielded_scheduled']}",
                        "{completed}/{failed}/{cancelled}/{discarded}".format(**e["line"]),
                        e["returncode"],
                        f"{e['seconds']:.2f} s (bound {e['bound']:.0f} s)",
                        e["lost"],
                    ]
                    for e in sigterm
                ],
            )
        )
    if passes := of("start-delay-passes"):
        parts.append("\n### Start delay of immediate work, in event-loop passes (in process)\n")
        parts.append(
            table(
                ["backend", "requests (200 at a time)", "p50", "p99"],
                [[e["backend"], e["requests"], e["p50"], e["p99"]] for e in passes],
            )
        )
    if soak := of("soak-tasks") + of("soak-requests"):
        parts.append("\n### Soak (in process)\n")
        parts.append(
            table(
                [
                    "run",
                    "backend",
                    "count",
                    "RSS after warm-up",
                    "RSS at end",
                    "growth",
                    "objects",
                    "Task objects alive after each join",
                ],
                [
                    [
                        "tasks" if e["test"] == "soak-tasks" else "requests",
                        e["backend"],
                        e["done"],
                        f"{e['rss_warm_mb']:.1f} MB",
                        f"{e['rss_last_mb']:.1f} MB",
                        f"{e['rss_growth']:+.1%}",
                        f"{e['objects_warm']} → {e['objects_last']}",
                        e["tasks_alive"],
                    ]
                    for e in soak
                ],
            )
        )
    if faults := of("faults"):
        parts.append("\n### Faults\n")
        parts.append(
            table(
                ["server", "faults in a row", "survived", "exit after SIGTERM"],
                [
                    [e["server"], e["faults"], e["survived"], f"{e['exit_seconds']:.2f} s"]
                    for e in faults
                ],
            )
        )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0])
    if not path.exists():
        sys.stdout.write(f"no results in {path}\n")
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    sys.stdout.write(render([json.loads(line) for line in lines if line]) + "\n")


if __name__ == "__main__":
    main()
