"""Real servers in processes of their own, and the load client beside them.

``serve()`` starts uvicorn (asyncio) or hypercorn's trio worker on a listening socket of
127.0.0.1 that the test made and hands down (so nothing polls for a free port or for the
server to come up: connections wait in the socket's backlog until the server accepts).
Each server gets a process group of its own (``start_new_session=True``); on the way
out it gets SIGTERM, and the whole group SIGKILL once a deadline passed, so no worker
process outlives a test.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("uvicorn", "hypercorn-trio")
START_SECONDS = 60.0
"""Longest a server may take to answer its first request (imports included, on a busy machine)."""
STOP_SECONDS = 20.0
"""Longest a server may take to exit after SIGTERM before its group is killed."""
BACKGROUND_APP = "tests.reliability.app:background_app"
TASKS_APP = "tests.reliability.app:tasks_app"


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELIABILITY_")}
    # Coverage of the subprocesses is not wanted: it slows the servers down and the
    # figures with them, and the in-process tests cover the library.
    env.pop("COVERAGE_PROCESS_START", None)
    env.update({"RELIABILITY_SERVER": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _command(kind: str, app: str, fd: int) -> list[str]:
    python = [sys.executable, "-W", "default"]
    if kind == "uvicorn":
        return [*python, "-m", "tests.reliability.run_uvicorn", app, str(fd)]
    if kind == "hypercorn-trio":
        return [
            *python,
            "-m",
            "hypercorn",
            "--worker-class",
            "trio",
            "--bind",
            f"fd://{fd}",
            # Seconds it lets connections finish after SIGTERM (default 3) before the
            # lifespan ends; shorter, so that shutdown finds work of ours still running.
            "--graceful-timeout",
            "1",
            app,
        ]
    raise ValueError(f"unknown server {kind!r}")


@dataclass
class Exit:
    """How a server process ended."""

    returncode: int | None
    """``None``: it did not exit in time and its group was killed."""
    seconds: float
    """From the signal to the exit (or to the kill)."""


class Server:
    """A server process serving one app on 127.0.0.1."""

    def __init__(self, kind: str, process: subprocess.Popen[bytes], port: int, log: Path):
        self.kind = kind
        self.process = process
        self.port = port
        self.log = log
        self.exit: Exit | None = None

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, Any]:
        """One request on a fresh connection: status and decoded JSON body (or None)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, None

    def alive(self) -> bool:
        """Whether the process runs and answers ``/health``."""
        if self.process.poll() is not None:
            return False
        try:
            status, _ = self.get("/health", timeout=10)
        except OSError:
            return False
        return status == 200

    def stop(self, sig: int = signal.SIGTERM, deadline: float = STOP_SECONDS) -> Exit:
        """Send ``sig``; kill the whole group if the server is still there after ``deadline``."""
        if self.exit is not None:
            return self.exit
        began = time.monotonic()
        returncode = self.process.poll()
        if returncode is None:
            os.kill(self.process.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                returncode = self.process.wait(deadline)
        self.exit = Exit(returncode, time.monotonic() - began)
        self.kill_group()
        return self.exit

    def kill_group(self) -> None:
        """SIGKILL every process left in the server's group (a worker whose parent died)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def output(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serve(
    kind: str, app: str, log: Path, env: Mapping[str, str] | None = None
) -> Generator[Server, None, None]:
    """Serve ``app`` with ``kind`` on a free port of 127.0.0.1 until the block ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port: int = listener.getsockname()[1]
    fd = listener.fileno()
    with log.open("wb") as output:
        process = subprocess.Popen(
            _command(kind, app, fd),
            cwd=ROOT,
            env=_environment(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,
        )
    # Only the server holds the socket now: if it dies, connections are refused.
    listener.close()
    server = Server(kind, process, port, log)
    try:
        status, _ = server.get("/health", timeout=START_SECONDS)
        if status != 200:
            raise RuntimeError(f"{kind} answered /health with {status}:\n{server.output()}")
        yield server
    finally:
        server.stop()


class ClientRun:
    """The load client, running."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.process = process
        self._stdout = process.stdout
        self._read = b""

    def wait_progress(self, answered: int, seconds: float) -> None:
        """Read progress lines until ``answered`` requests were answered (bounded)."""
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            selector.register(self._stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not selector.select(left):
                    break
                chunk = os.read(self._stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"the load client ended early: {self._read[-500:]!r}")
                self._read += chunk
                progress = [
                    int(line.split()[1])
                    for line in self._read.decode().splitlines()
                    if line.startswith("progress ")
                ]
                if progress and progress[-1] >= answered:
                    return
        raise TimeoutError(f"the load client did not reach {answered} answers in {seconds}s")

    def result(self, seconds: float = 300.0) -> dict[str, Any]:
        """Wait for the client to end; its JSON report."""
        rest, _ = self.process.communicate(timeout=seconds)
        out = (self._read + rest).decode()
        lines = [line for line in out.splitlines() if not line.startswith("progress ")]
        if self.process.returncode != 0 or not lines:
            raise RuntimeError(f"the load client failed ({self.process.returncode}): {out}")
        report: dict[str, Any] = json.loads(lines[-1])
        return report


@contextmanager
def load_client(
    port: int,
    *,
    requests: int,
    connections: int,
    paths: str = "/load,/load,/load,/load-sync",
    seconds: float = 240.0,
    progress: int = 0,
) -> Generator[ClientRun, None, None]:
    """Start the load client against ``port`` (a process of its own, like the server)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.client",
            f"--port={port}",
            f"--paths={paths}",
            f"--requests={requests}",
            f"--connections={connections}",
            f"--seconds={seconds}",
            f"--progress={progress}",
        ],
        cwd=ROOT,
        env=_environment({}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        bufsize=0,
        start_new_session=True,
    )
    try:
        yield ClientRun(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
