"""What every reliability test shares: the sizes of a run, percentiles, results and log checks.

The sizes come from here alone. ``scripts/test`` runs the short sizes; ``scripts/reliability``
sets ``FASTAPI_TASKS_RELIABILITY=full`` for the long ones, and
``FASTAPI_TASKS_RELIABILITY_RESULTS`` to a file that collects every measured figure
(one JSON object a line) for ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SIZE_VARIABLE = "FASTAPI_TASKS_RELIABILITY"
RESULTS_VARIABLE = "FASTAPI_TASKS_RELIABILITY_RESULTS"


@dataclass(frozen=True)
class Sizes:
    """How much each reliability test does."""

    name: str
    load_requests: int
    """Requests per app and round of the load test (each schedules three tasks)."""
    load_connections: int
    load_rounds: int
    """Rounds of the load test; each round serves the fastapi-tasks app, then BackgroundTasks."""
    sigterm_runs: int
    """SIGTERMs in the middle of load, per server."""
    sigterm_connections: int
    fanout: int
    """Tasks one task schedules in the fan-out fault."""
    property_examples: int
    """Random programs per property test and backend."""
    soak_tasks: int
    soak_requests: int
    soak_batch: int
    """Tasks (or requests) between two joins, and between two samples, in the soak."""
    start_delay_requests: int
    """In-process requests of the start-delay check, 200 at a time."""


SHORT = Sizes(
    name="short",
    load_requests=2_000,
    load_connections=200,
    load_rounds=1,
    sigterm_runs=1,
    sigterm_connections=100,
    fanout=10_000,
    property_examples=25,
    soak_tasks=20_000,
    soak_requests=4_000,
    soak_batch=2_000,
    start_delay_requests=2_000,
)

FULL = Sizes(
    name="full",
    load_requests=20_000,
    load_connections=200,
    load_rounds=2,
    sigterm_runs=5,
    sigterm_connections=100,
    fanout=10_000,
    property_examples=400,
    soak_tasks=1_000_000,
    soak_requests=200_000,
    soak_batch=10_000,
    start_delay_requests=20_000,
)

SIZES = FULL if os.environ.get(SIZE_VARIABLE) == "full" else SHORT

# Lines no run may print: asyncio's and Python's signs of work that was lost or leaked,
# and logging's sign of a record it could not format.
FORBIDDEN_OUTPUT = (
    "was never awaited",
    "Task was destroyed but it is pending",
    "--- Logging error ---",
)

_STOPPED = re.compile(
    r"task manager stopped: (?P<completed>\d+) completed, (?P<failed>\d+) failed, "
    r"(?P<cancelled>\d+) cancelled, (?P<discarded>\d+) discarded"
)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def stopped_line(output: str) -> dict[str, int] | None:
    """The counts of the manager's last "task manager stopped: ..." log line, if any."""
    found = list(_STOPPED.finditer(output))
    if not found:
        return None
    return {key: int(value) for key, value in found[-1].groupdict().items()}


def forbidden_lines(output: str, *, tracebacks: bool) -> list[str]:
    """Lines of ``output`` that show lost or leaked work (and tracebacks, if asked)."""
    patterns = FORBIDDEN_OUTPUT + (("Traceback",) if tracebacks else ())
    return [line for line in output.splitlines() if any(p in line for p in patterns)]


def record(test: str, **figures: object) -> None:
    """Append measured figures to the results file of this run, if one was given."""
    path = os.environ.get(RESULTS_VARIABLE)
    if not path:
        return
    entry = {"test": test, "sizes": SIZES.name, "time": time.time(), **figures}
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(json.dumps(entry) + "\n")


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc`` (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
