"""Real parts for the distributed tests: ``redis-server`` on loopback, ``taskiq worker`` processes.

``redis-server`` comes from Debian (``scripts/services`` installs it); without it the
tests that need it skip with the reason. Workers run taskiq's own command in their own
process groups and are stopped with SIGKILL of the group after a short grace: an idle
taskiq worker ignores SIGTERM until a message arrives.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from redis import Redis

from tests import taskiq_jobs

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (scripts/services installs Debian's redis-server)",
)
WAIT = 30.0
"""Seconds any wait of these tests may take at most."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self._log = (tmp / f"redis-{self.port}.log").open("w")
        assert REDIS_SERVER is not None
        self._process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self.client.execute_command("PING")  # type: ignore[no-untyped-call]
                break
            except Exception:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)  # polling a server that is starting, bounded by the deadline

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(WAIT)
        self.client.close()
        self._log.close()

    def wait_until_acknowledged(self, queue: str, timeout: float = WAIT) -> None:
        """Poll until the workers' group has no job delivered and not acknowledged; bounded."""
        deadline = time.monotonic() + timeout
        while True:
            pending: dict[str, object] = self.client.xpending(queue, "taskiq")
            if pending["pending"] == 0:
                return
            assert time.monotonic() < deadline, f"jobs still pending: {pending}"
            time.sleep(0.05)  # polling Redis, bounded by the deadline

    def wait_for_list(self, key: str, length: int, timeout: float = WAIT) -> list[str]:
        """Poll the list ``key`` until it holds ``length`` items; bounded."""
        deadline = time.monotonic() + timeout
        while True:
            items: list[str] = self.client.lrange(key, 0, -1)  # type: ignore[assignment]
            if len(items) >= length or time.monotonic() > deadline:
                return items
            time.sleep(0.05)  # polling Redis, bounded by the deadline


async def wait_for_list(
    redis: RedisServer, key: str, length: int, within: float = WAIT
) -> list[str]:
    """``redis.wait_for_list`` off the event loop, which keeps running meanwhile."""
    return await anyio.to_thread.run_sync(redis.wait_for_list, key, length, within)


class Workers:
    """``taskiq worker`` processes for one queue; all are killed at the end."""

    def __init__(
        self,
        redis: RedisServer,
        queue: str,
        tmp: Path,
        idle_timeout_ms: int,
        target: str = "tests.taskiq_jobs:broker",
    ) -> None:
        self._target = target
        self._env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples")]),
            "REDIS_URL": redis.url,
            taskiq_jobs.URL_VARIABLE: redis.url,
            taskiq_jobs.QUEUE_VARIABLE: queue,
            taskiq_jobs.IDLE_VARIABLE: str(idle_timeout_ms),
        }
        self._tmp = tmp
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            log = (self._tmp / f"worker-{uuid.uuid4().hex[:8]}.log").open("w")
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskiq",
                    "worker",
                    self._target,
                    "--workers",
                    "1",
                    "--shutdown-timeout",
                    "1",
                ],
                cwd=ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            self.processes.append(process)

    def kill_group_of(self, pid: int) -> None:
        """SIGKILL the worker whose process group holds ``pid`` (a job's process)."""
        group = os.getpgid(pid)
        for process in self.processes:
            if process.pid == group:
                os.killpg(group, signal.SIGKILL)
                process.wait(WAIT)
                return
        raise AssertionError(f"pid {pid} is not one of the workers")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:  # pragma: no cover - it just ended
                    continue
        for process in self.processes:
            try:
                process.wait(1.0)  # the short grace; idle workers ignore SIGTERM
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(WAIT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:  # pragma: no cover - scripts/services installs it
        pytest.skip("redis-server is not installed (scripts/services installs it)")
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def queue() -> str:
    return f"fastapi-tasks-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(redis_server: RedisServer, queue: str, tmp_path: Path) -> Iterator[Workers]:
    # The default idle_timeout: a small one makes a slow machine deliver jobs twice.
    started = Workers(redis_server, queue, tmp_path, idle_timeout_ms=600_000)
    try:
        yield started
    finally:
        started.stop()
