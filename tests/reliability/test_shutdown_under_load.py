"""SIGTERM in the middle of load, on real servers.

The load client keeps ``GET /work`` busy: three tasks a request, one per mode, lasting
0.1 to 2 s, a quarter of them shielded, with ``shutdown_timeout=1``. Each task writes
to an events file when it is scheduled (``S``), begins (``B``), ends (``E``) or is
cancelled (``C``); the test marks the moment it sends SIGTERM, and the app's own
shutdown code appends the manager's final counters. Then: every task that began ended
exactly once, every shielded task ran to its end, the counters add up and match the
events, the final "task manager stopped" log line counts what shutdown cancelled and
discarded, the process exits within the grace period plus the longest shielded work
(plus the server's own drain), and the output has no sign of lost work and no traceback.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .app import WORK_LONGEST
from .harness import SIZES, forbidden_lines, record, stopped_line
from .servers import SERVERS, TASKS_APP, load_client, serve

pytestmark = pytest.mark.reliability

GRACE = 1.0
"""The app's ``shutdown_timeout``."""
SERVER_DRAIN = 3.0
"""What the server itself may take to stop: answering requests in flight and closing
connections before the lifespan ends, and interpreter exit, on a busy 2-core machine."""
EXIT_BOUND = GRACE + WORK_LONGEST + SERVER_DRAIN


@dataclass
class Events:
    scheduled: dict[int, bool] = field(default_factory=dict[int, bool])
    began: set[int] = field(default_factory=set[int])
    ended: list[int] = field(default_factory=list[int])
    ended_after_signal: list[int] = field(default_factory=list[int])
    cancelled: list[int] = field(default_factory=list[int])
    cancelled_before_signal: list[int] = field(default_factory=list[int])
    stats: dict[str, int] | None = None


def read_events(path: Path) -> Events:
    events = Events()
    signalled = False
    for line in path.read_text(encoding="ascii").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "SIGTERM":
            signalled = True
        elif kind == "STATS":
            events.stats = json.loads(rest)
        elif kind == "S":
            key, shielded = rest.split()
            events.scheduled[int(key)] = shielded == "1"
        elif kind == "B":
            events.began.add(int(rest))
        elif kind == "E":
            events.ended.append(int(rest))
            if signalled:
                events.ended_after_signal.append(int(rest))
        elif kind == "C":
            events.cancelled.append(int(rest))
            if not signalled:
                events.cancelled_before_signal.append(int(rest))
    return events


@pytest.mark.parametrize("run", range(SIZES.sigterm_runs))
@pytest.mark.parametrize("kind", SERVERS)
def test_sigterm_under_load(kind: str, run: int, tmp_path: Path) -> None:
    path = tmp_path / "events"
    env = {"RELIABILITY_EVENTS": str(path), "RELIABILITY_SHUTDOWN_TIMEOUT": str(GRACE)}
    signal_after = 300 + 150 * run  # answered requests: a different moment each run
    with (
        serve(kind, TASKS_APP, tmp_path / "server.log", env) as server,
        load_client(
            server.port,
            requests=100 * signal_after,  # far more than it gets through before SIGTERM
            connections=SIZES.sigterm_connections,
            paths="/work",
            progress=50,
        ) as client,
    ):
        client.wait_progress(signal_after, seconds=120)
        with path.open("a", encoding="ascii") as file:
            file.write("SIGTERM\n")
        stopped = server.stop(signal.SIGTERM, deadline=EXIT_BOUND + 15)
        load = client.result()
    output = server.output()
    events = read_events(path)

    assert stopped.returncode in (0, -15), output  # uvicorn re-raises SIGTERM once done
    assert stopped.seconds <= EXIT_BOUND, output
    assert forbidden_lines(output, tracebacks=True) == []
    assert load["answered"] >= signal_after

    ended, cancelled = set(events.ended), set(events.cancelled)
    assert len(ended) == len(events.ended)
    assert len(cancelled) == len(events.cancelled)
    assert events.began <= set(events.scheduled)
    assert ended | cancelled == events.began, "every task that began ended exactly once"
    assert not ended & cancelled
    assert events.cancelled_before_signal == []
    shielded = {key for key, is_shielded in events.scheduled.items() if is_shielded}
    assert shielded <= ended, "shielded work always runs to its end"

    stats = events.stats
    assert stats is not None, output
    assert stats["pending"] == stats["running"] == stats["failed"] == 0
    assert stats["scheduled"] == (
        stats["pending"]
        + stats["running"]
        + stats["succeeded"]
        + stats["failed"]
        + stats["cancelled"]
        + stats["discarded"]
    )
    assert stats["scheduled"] == len(events.scheduled)
    assert stats["succeeded"] == len(ended)
    never_began = len(events.scheduled) - len(events.began)
    assert stats["cancelled"] + stats["discarded"] == len(cancelled) + never_began

    line = stopped_line(output)
    assert line is not None, output
    assert line["failed"] == 0
    # Nothing is cancelled or discarded before shutdown here: all of it is in the line.
    assert line["cancelled"] == stats["cancelled"]
    assert line["discarded"] == stats["discarded"]
    assert line["completed"] <= len(events.ended_after_signal)

    record(
        "sigterm",
        server=kind,
        run=run,
        scheduled=len(events.scheduled),
        began=len(events.began),
        ended=len(ended),
        cancelled_running=len(cancelled),
        never_began=never_began,
        shielded_scheduled=len(shielded),
        shielded_ended=len(shielded & ended),
        line=line,
        returncode=stopped.returncode,
        seconds=stopped.seconds,
        bound=EXIT_BOUND,
        lost=len(events.scheduled) - len(ended) - stats["cancelled"] - stats["discarded"],
    )
