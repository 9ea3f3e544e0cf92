"""One measurement in a process of its own; started by ``benchmarks.run``, prints JSON.

Runs in this repository's environment, in the one holding ``fastapi-tasks`` 0.1.0 and
in the one holding fastapi-taskflow (``python -m benchmarks.worker`` from the
repository root; ``src/`` is not on the path there, so ``fastapi_tasks`` is whatever
that environment installed, if anything).

Commands:

``count``      build every variant's app, run their lifespans, warm each one up, then
               send ``--requests`` requests to ``--measure``; meant to run under
               cachegrind, once with ``--requests 0`` as the baseline.
``inprocess``  wall time per request over raw ASGI, and the ``schedule()`` call micro
               benchmarks.
``serve``      serve one variant with uvicorn on 127.0.0.1, on a port the system picks;
               prints the port, stops on SIGINT/SIGTERM.
``fanout``     one request schedules ``--tasks`` no-op tasks: time to schedule, time
               until all ran, RSS. For ``monitor-*`` variants, a live stream of the
               monitor is read meanwhile: how many messages it sent.
``memory``     one request schedules ``--tasks`` tasks that block on an event: resident
               memory per pending task.
``batch``      the durable-work section's fan-out: one request schedules ``--tasks``
               numbered no-op tasks; time until all ran, and until the SQLite file
               holds every one as finished (when the variant keeps one).

Variants that keep an SQLite file (``_apps.uses_file``) take it from ``--file``: each
app of the process gets that path with its own suffix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import socket
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.types import Message

from . import _apps
from ._apps import (
    begun,
    build_app,
    finished,
    open_gate,
    schedule_timings,
    tasks_per_request,
    uses_file,
)
from ._asgi import Client, running

_PAGE = resource.getpagesize()


def _rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _emit(result: dict[str, Any]) -> None:
    result["fastapi_tasks"] = _installed("fastapi-tasks")
    result["fastapi_taskflow"] = _installed("fastapi-taskflow")
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


async def _settle(name: str) -> None:
    """Let the loop take in what worker threads finished after the driver moved on.

    ``def`` work reports to the driver from its thread, before the library learns that
    the thread returned; requests that never suspend would leave that news queued.
    """
    if name.endswith("-sync"):
        await asyncio.sleep(0.05)


def _path(file: str | None, variant: str, suffix: str = "") -> str | None:
    """The SQLite file of ``variant``'s app, if it keeps one."""
    if not uses_file(variant):
        return None
    if file is None:
        raise SystemExit(f"{variant} keeps an SQLite file: give --file")
    return f"{file}.{variant}{suffix}.db"


async def _count(
    variants: list[str], measure: str, requests: int, warmup: int, file: str | None
) -> None:
    _apps.bind_loop()
    apps = {
        name: (build_app(name, path=_path(file, name)), tasks_per_request(name))
        for name in variants
    }
    async with running(apps) as client:
        for name in variants:
            for _ in range(warmup):
                await client.request(name)
            await _settle(name)
        gc.collect()
        for _ in range(requests):
            await client.request(measure)
        await _settle(measure)


async def _inprocess(
    variants: list[str],
    micro: list[str],
    requests: int,
    warmup: int,
    calls: int,
    samples: int,
    micro_samples: int,
) -> None:
    _apps.bind_loop()
    result: dict[str, Any] = {"asgi": {}, "cyclic": {}, "micro": {}}
    apps = {name: (build_app(name), tasks_per_request(name)) for name in variants}
    for name in micro:
        apps[f"micro:{name}"] = (
            build_app(name, count=calls, timed=True),
            tasks_per_request(name, calls),
        )
    async with running(apps) as client:
        for name in variants:
            for _ in range(warmup):
                await client.request(name)
            timings: list[float] = []
            for _ in range(samples):
                start = time.perf_counter()
                for _ in range(requests):
                    await client.request(name)
                timings.append((time.perf_counter() - start) / requests)
                await _settle(name)
            result["asgi"][name] = timings
            # What each request leaves for the cycle collector: garbage that reference
            # counting cannot free, and that makes the collector run (and pause) more often.
            gc.collect()
            gc.disable()
            try:
                for _ in range(requests):
                    await client.request(name)
                await _settle(name)
            finally:
                result["cyclic"][name] = gc.collect() / requests
                gc.enable()
        for name in micro:
            del schedule_timings[:]
            for _ in range(micro_samples + 1):  # the first one warms up
                # As timeit does: a collection landing in one sample would swamp it. The
                # cost the collector adds per task shows in the fan-out scenario.
                gc.disable()
                try:
                    await client.request(f"micro:{name}")
                finally:
                    gc.enable()
            result["micro"][name] = [elapsed / calls for elapsed in schedule_timings[1:]]
    _emit(result)


async def _fanout(variant: str, tasks: int) -> None:
    _apps.bind_loop()
    apps = {
        "warm": (build_app(variant, count=100, timed=True), tasks_per_request(variant, 100)),
        "fanout": (build_app(variant, count=tasks, timed=True), tasks_per_request(variant, tasks)),
    }
    async with running(apps, check=False) as client:
        for _ in range(3):
            await client.request("warm")
        gc.collect()
        stream = _Stream(client) if variant.startswith("monitor-") else None
        if stream is not None:
            await stream.first.wait()
        before = _rss()
        start = time.perf_counter()
        status = await client.call("fanout")
        responded = time.perf_counter() - start
        client.expected += tasks_per_request(variant, tasks)
        await finished.reach(client.expected)
        done = time.perf_counter() - start
        peak = _peak_rss()
        messages = None
        if stream is not None:
            # The burst leaves the stream no turn on the loop until it is over: count
            # what it sends during the fan-out and the second after it.
            await asyncio.sleep(1.0)
            messages = await stream.close()
    if status != 200:
        raise RuntimeError(f"{variant}: GET / answered {status}")
    _emit(
        {
            "schedule": schedule_timings[-1],
            "response": responded,
            "done": done,
            "rss_before": before,
            "peak_rss": peak,
            "stream_messages": messages,
            "stream_seconds": None if messages is None else done + 1.0,
        }
    )


class _Stream:
    """Reads the monitor's live stream (``/tasks/api/stream``) of the fan-out app."""

    def __init__(self, client: Client) -> None:
        self.first = asyncio.Event()
        self.messages = 0
        self._counting = False
        app = client.app("fanout")
        self._task = asyncio.create_task(
            app(client.scope("fanout", "/tasks/api/stream"), self._receive, self._send)
        )

    async def _receive(self) -> Message:
        await asyncio.Event().wait()  # the client never leaves: close() cancels the stream
        raise AssertionError("unreachable")

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            if self._counting:
                self.messages += message.get("body", b"").count(b"event: snapshot")
            else:  # the snapshot sent on connecting, before the fan-out
                self._counting = True
                self.first.set()

    async def close(self) -> int:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.messages


async def _memory(variant: str, tasks: int) -> None:
    _apps.bind_loop()
    warm = tasks_per_request(variant, 100)
    pending = tasks_per_request(variant, tasks)
    apps = {
        "warm": (build_app(variant, count=100, work="blocked"), warm),
        "memory": (build_app(variant, count=tasks, work="blocked"), pending),
    }
    async with running(apps, check=False) as client:
        await client.call("warm")
        await begun.reach(warm)
        open_gate()
        await finished.reach(warm)
        gc.collect()
        before = _rss()
        status = await client.call("memory")
        await begun.reach(warm + pending)
        gc.collect()
        after = _rss()
        open_gate()
        await finished.reach(warm + pending)
    if status != 200:
        raise RuntimeError(f"{variant}: GET / answered {status}")
    _emit({"rss_before": before, "rss_pending": after, "per_task": (after - before) / pending})


def _serve(variant: str, file: str | None) -> None:
    import uvicorn

    path = _path(file, variant)
    if path is not None:
        from ._durable import count_statements

        count_statements()
    app = build_app(variant, path=path)
    # With the protocol named, asyncio sets TCP_NODELAY on accepted connections; without it,
    # Nagle and delayed ACKs add 40 ms to every response.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        _apps.bind_loop()
        await server.serve(sockets=[listener])

    sys.stdout.write(f"{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    asyncio.run(serve())


async def _batch(variant: str, tasks: int, file: str | None) -> None:
    from ._durable import count_statements, statements

    _apps.bind_loop()
    path = _path(file, variant)
    if path is not None:
        count_statements()
    # fastapi-taskflow's manager, and so its file, is one per process: the warm-up's rows
    # land in the same file, and are waited for before the measurement.
    shared = variant.startswith("tfsnapshot-")
    warm_path = path if shared else _path(file, variant, ".warm")
    apps = {
        "warm": (build_app(variant, count=100, path=warm_path), 100),
        "batch": (build_app(variant, count=tasks, path=path), tasks),
    }
    async with running(apps, check=False) as client:
        for _ in range(3):
            await client.request("warm")
        base = 300 if shared else 0
        if path is not None:
            await _settled(path, variant, base)
        gc.collect()
        before = statements()
        start = time.perf_counter()
        status = await client.call("batch")
        responded = time.perf_counter() - start
        client.expected += tasks
        await finished.reach(client.expected)
        done = time.perf_counter() - start
        settled = None
        if path is not None:
            await _settled(path, variant, base + tasks)
            settled = time.perf_counter() - start
        after = statements()
    if status != 200:
        raise RuntimeError(f"{variant}: GET / answered {status}")
    _emit(
        {
            "response": responded,
            "done": done,
            "settled": settled,
            "statements": {key: after[key] - before[key] for key in after},
        }
    )


# How many of the batch's rows are final, in each library's tables.
_FINAL = {
    "durable": "SELECT count(*) FROM fastapi_tasks_journal WHERE state != 'pending'",
    "tfsnapshot": "SELECT count(*) FROM task_snapshots",
}


async def _settled(path: str, variant: str, tasks: int) -> None:
    """Return once the file at ``path`` holds ``tasks`` rows as finished.

    Polled every 5 ms from a connection of our own (WAL readers do not block the
    writer): neither library says when its writes landed.
    """
    import sqlite3

    query = _FINAL[variant.partition("-")[0]]
    reader = sqlite3.connect(path, check_same_thread=False)
    try:
        while True:
            found = await asyncio.to_thread(lambda: reader.execute(query).fetchone()[0])
            if found >= tasks:
                return
            await asyncio.sleep(0.005)
    finally:
        reader.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    commands = parser.add_subparsers(dest="command", required=True)
    count = commands.add_parser("count")
    count.add_argument("--variants", required=True)
    count.add_argument("--measure", required=True)
    count.add_argument("--requests", type=int, required=True)
    count.add_argument("--warmup", type=int, default=50)
    count.add_argument("--file", default=None)
    inprocess = commands.add_parser("inprocess")
    inprocess.add_argument("--variants", required=True)
    inprocess.add_argument("--micro", default="")
    inprocess.add_argument("--requests", type=int, default=1000)
    inprocess.add_argument("--warmup", type=int, default=100)
    inprocess.add_argument("--calls", type=int, default=500)
    inprocess.add_argument("--samples", type=int, default=2)
    inprocess.add_argument("--micro-samples", type=int, default=10)
    serve = commands.add_parser("serve")
    serve.add_argument("--variant", required=True)
    serve.add_argument("--file", default=None)
    batch = commands.add_parser("batch")
    batch.add_argument("--variant", required=True)
    batch.add_argument("--tasks", type=int, default=10_000)
    batch.add_argument("--file", default=None)
    for name in ("fanout", "memory"):
        command = commands.add_parser(name)
        command.add_argument("--variant", required=True)
        command.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args(argv)

    if args.command == "count":
        asyncio.run(
            _count(args.variants.split(","), args.measure, args.requests, args.warmup, args.file)
        )
    elif args.command == "inprocess":
        asyncio.run(
            _inprocess(
                args.variants.split(","),
                [name for name in args.micro.split(",") if name],
                args.requests,
                args.warmup,
                args.calls,
                args.samples,
                args.micro_samples,
            )
        )
    elif args.command == "serve":
        _serve(args.variant, args.file)
    elif args.command == "batch":
        asyncio.run(_batch(args.variant, args.tasks, args.file))
    elif args.command == "fanout":
        asyncio.run(_fanout(args.variant, args.tasks))
    else:
        asyncio.run(_memory(args.variant, args.tasks))


if __name__ == "__main__":
    main()
