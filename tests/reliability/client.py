"""A small HTTP/1.1 load client in a process of its own: ``python -m tests.reliability.client``.

It keeps ``--connections`` keep-alive connections to 127.0.0.1 busy until ``--requests``
requests were sent (cycling through ``--paths``) or ``--seconds`` passed, whichever comes
first, and prints one JSON line with what it measured: answers by status, errors,
requests per second, and latency percentiles. With ``--progress N`` it also prints
``progress <count>`` every N answers, so a test can act in the middle of the load.

Raw asyncio streams rather than an HTTP library: on two cores the client must leave the
server most of the CPU. A connection that fails (the server went away) counts an error
and ends; the others go on until they fail too or the work is done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from .harness import percentile


@dataclass
class Load:
    port: int
    paths: list[str]
    total: int
    progress: int
    next_index: int = 0
    answered: int = 0
    errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter[int])
    latencies: list[float] = field(default_factory=list[float])

    def take(self) -> int | None:
        if self.next_index >= self.total:
            return None
        index = self.next_index
        self.next_index += 1
        return index

    def answer(self, status: int, latency: float) -> None:
        self.statuses[status] += 1
        self.latencies.append(latency)
        self.answered += 1
        if self.progress and self.answered % self.progress == 0:
            sys.stdout.write(f"progress {self.answered}\n")
            sys.stdout.flush()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return its status and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep_alive = False
    await reader.readexactly(length)
    return status, keep_alive


async def connection(load: Load) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while (index := load.take()) is not None:
            if reader is None or writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", load.port)
            path = load.paths[index % len(load.paths)]
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            began = time.perf_counter()
            writer.write(request)
            status, keep_alive = await read_response(reader)
            load.answer(status, time.perf_counter() - began)
            if not keep_alive:
                writer.close()
                reader = writer = None
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        load.errors += 1
    finally:
        if writer is not None:
            writer.close()


async def run(load: Load, connections: int, seconds: float) -> dict[str, object]:
    began = time.perf_counter()
    workers = [asyncio.create_task(connection(load)) for _ in range(connections)]
    _, late = await asyncio.wait(workers, timeout=seconds)
    for worker in late:
        worker.cancel()
    if late:
        await asyncio.wait(late)
    elapsed = time.perf_counter() - began
    return {
        "requests": load.next_index,
        "answered": load.answered,
        "errors": load.errors,
        "timed_out": len(late),
        "statuses": {str(status): count for status, count in load.statuses.items()},
        "seconds": elapsed,
        "rps": load.answered / elapsed if elapsed else 0.0,
        "p50": percentile(load.latencies, 0.50),
        "p99": percentile(load.latencies, 0.99),
        "max": max(load.latencies, default=0.0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--paths", default="/load", help="comma-separated, used in turn")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120.0, help="upper bound of the run")
    parser.add_argument("--progress", type=int, default=0)
    args = parser.parse_args(argv)
    load = Load(args.port, args.paths.split(","), args.requests, args.progress)
    result = asyncio.run(run(load, args.connections, args.seconds))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
