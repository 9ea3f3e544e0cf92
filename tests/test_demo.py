"""The checkout demo behind ``scripts/demo``: it runs by itself and its timeline keeps promises.

Only the order of moments is asserted, never their durations.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import demo

DEMO_SCRIPT = Path(demo.__file__).resolve()
AFTER_RESPONSE = ("send_confirmation_email", "notify_shipping")


def test_timeline_keeps_the_promises_of_each_mode() -> None:
    outcome = asyncio.run(demo.run_demo())

    assert outcome.status_code == 200
    assert outcome.body == {"order_id": 9042, "payment_id": 7042, "status": "processing"}
    labels = outcome.timeline.labels
    # Each label once, so positions say everything about the order.
    assert len(set(labels)) == len(labels)
    headers = next(
        label for label in labels if label.startswith("server sent the response headers")
    )
    handed_over_before_headers = headers.partition("live tasks: ")[2].rstrip(")").split(", ")

    def at(label: str) -> int:
        return labels.index(label)

    # Immediate work started while the endpoint still ran.
    assert at("endpoint started") < at("validate_payment started (immediate)")
    assert at("validate_payment started (immediate)") < at("endpoint returned")
    # After-route work was handed over after the endpoint and before the headers went out ...
    assert at("endpoint returned") < at(headers)
    assert "finalize_order" in handed_over_before_headers
    assert at("endpoint returned") < at("finalize_order started (after route)")
    # ... while after-response work waited for the last byte, in the order it was scheduled.
    assert not set(AFTER_RESPONSE) & set(handed_over_before_headers)
    assert (
        at("server sent the response's last byte")
        < at("send_confirmation_email started (after response)")
        < at("notify_shipping started (after response)")
    )
    assert at("finalize_order started (after route)") < at(
        "send_confirmation_email started (after response)"
    )
    # Fire-and-forget: the client had its answer while the after-response work still ran.
    for name in AFTER_RESPONSE:
        assert at("client received the response") < at(f"{name} finished")
    for name in ("validate_payment", "finalize_order", *AFTER_RESPONSE):
        assert f"{name} finished" in labels


def test_script_runs_by_itself_and_exits_cleanly() -> None:
    completed = subprocess.run(
        [sys.executable, str(DEMO_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].endswith(
        '-> 200 {"order_id": 9042, "payment_id": 7042, "status": "processing"}'
    )
    assert lines[-1] == "client got its response before the after-response work finished: yes"
    assert lines[1].startswith("monitor page: http://127.0.0.1:")
    assert lines[1].split()[2].endswith("/tasks/")

    def line_of(text: str) -> int:
        return next(index for index, line in enumerate(lines) if line.endswith(text))

    assert (
        line_of("endpoint returned")
        < line_of("server sent the response's last byte")
        < line_of("send_confirmation_email started (after response)")
    )
