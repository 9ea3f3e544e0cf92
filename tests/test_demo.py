"""The checkout demo behind ``scripts/demo``: it runs by itself and its timeline keeps promises.

Only the order of moments is asserted, never their durations.
"""

from __future__ import annotations

import ast
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import demo

DEMO_SCRIPT = Path(demo.__file__).resolve()
ROOT = DEMO_SCRIPT.parent.parent
AFTER_RESPONSE = ("send_confirmation_email", "notify_shipping")
HANDED_OVER = "finalize_order handed over (after route), before the response starts"


def test_timeline_keeps_the_promises_of_each_mode() -> None:
    outcome = asyncio.run(demo.run_demo())

    assert outcome.status_code == 200
    assert outcome.body == {"order_id": 9042, "payment_id": 7042, "status": "processing"}
    labels = outcome.timeline.labels
    # Each label once, so positions say everything about the order.
    assert len(set(labels)) == len(labels)

    def at(label: str) -> int:
        return labels.index(label)

    headers = at("server sent the response headers")
    # Immediate work started at the endpoint's first await, while the endpoint still ran.
    assert (
        at("endpoint started")
        < at("endpoint scheduled validate_payment, then awaits the database")
        < at("validate_payment started (immediate)")
        < at("endpoint returned")
    )
    # After-route work was handed over after the endpoint and before the headers went out ...
    assert at("endpoint returned") < at(HANDED_OVER) < headers
    assert at("endpoint returned") < at("finalize_order started (after route)")
    # ... and nothing else was: after-response work waited for the last byte, in the
    # order it was scheduled.
    handed_over = [label for label in labels[:headers] if " handed over " in label]
    assert handed_over == [HANDED_OVER]
    assert (
        at("server sent the response's last byte")
        < at("send_confirmation_email started (after response)")
        < at("notify_shipping started (after response)")
    )
    assert at("finalize_order started (after route)") < at(
        "send_confirmation_email started (after response)"
    )
    # Fire-and-forget: the client had its answer while the after-response work still ran.
    assert at("server sent the response's last byte") < at("client received the response")
    for name in AFTER_RESPONSE:
        assert at("client received the response") < at(f"{name} finished")
    for name in ("validate_payment", "finalize_order", *AFTER_RESPONSE):
        assert f"{name} finished" in labels


def test_script_runs_by_itself_and_explains_the_timeline() -> None:
    completed = subprocess.run(
        [sys.executable, str(DEMO_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    lines = output.splitlines()
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
        < line_of(HANDED_OVER)
        < line_of("server sent the response's last byte")
        < line_of("send_confirmation_email started (after response)")
    )
    # The words the README and the docs use for the three moments.
    assert "starts at the endpoint's next `await`" in output
    assert "handed over before the response starts, runs alongside it" in output
    assert "handed over after the response's last byte was sent" in output
    assert "before the response goes out" not in output


def test_examples_need_only_the_package_and_uvicorn() -> None:
    """scripts/demo installs fastapi-tasks and uvicorn, nothing else: no test client."""
    allowed = {"anyio", "checkout", "fastapi", "fastapi_tasks", "pydantic", "starlette"}
    allowed |= {"uvicorn"} | set(sys.stdlib_module_names)
    for example in (DEMO_SCRIPT, DEMO_SCRIPT.with_name("checkout.py")):
        tree = ast.parse(example.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and not node.level
        }
        assert imported <= allowed, (example.name, imported - allowed)


def _find_python(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``find_recent_python`` from scripts/_lib.sh with only ``tmp_path/bin`` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    dirname = bin_dir / "dirname"  # the one program _lib.sh runs when sourced
    if not dirname.exists():
        found = shutil.which("dirname")
        assert found is not None
        dirname.symlink_to(found)
    script = f'source "{ROOT / "scripts" / "_lib.sh"}"; find_recent_python'
    return subprocess.run(
        ["/bin/bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path), **env},
    )


def test_demo_finds_a_python_under_pyenv_or_on_path(tmp_path: Path) -> None:
    # Nothing on PATH and no pyenv: a clear message, and a failure.
    nothing = _find_python(tmp_path)
    assert nothing.returncode == 1
    assert "no Python 3.10 or newer" in nothing.stderr

    # A pyenv installation (this interpreter stands in for it: any 3.10+ qualifies).
    pyenv = tmp_path / ".pyenv" / "versions" / "3.12.99" / "bin" / "python3.12"
    pyenv.parent.mkdir(parents=True)
    pyenv.symlink_to(sys.executable)
    assert _find_python(tmp_path).stdout.strip() == str(pyenv)

    # A newer one on PATH wins; one that does not run (a stale pyenv shim) is skipped.
    on_path = tmp_path / "bin" / "python3.13"
    on_path.write_text("#!/bin/sh\nexit 127\n")
    on_path.chmod(0o755)
    assert _find_python(tmp_path).stdout.strip() == str(pyenv)
    on_path.unlink()
    on_path.symlink_to(sys.executable)
    assert _find_python(tmp_path).stdout.strip() == str(on_path)

    # PYTHON chooses explicitly.
    assert _find_python(tmp_path, PYTHON=str(pyenv)).stdout.strip() == str(pyenv)
