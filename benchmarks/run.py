"""Run every benchmark side by side and write ``docs/benchmarks.md``; ``scripts/bench`` calls it.

Each measurement runs in a fresh process (``benchmarks.worker``), in this repository's
environment ("current"), in the one holding the ``fastapi-tasks`` 0.1.0 wheel
("0.1.0"), or in the one holding fastapi-taskflow ("taskflow", and "taskflow-install"
for its processes patched by its ``install()``: only its instructions per request and
its fan-out; without it, the run goes on and the page says why).
Wall-time measurements are interleaved: every round runs every variant once, in a
rotated order, so drift of a shared machine spreads over all of them. Instruction
counts (cachegrind) are deterministic and run once per variant, two at a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Generator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._report import render, render_durable, splice

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"

REFERENCES = [
    "bare",
    "depends",
    "create_task",
    "start_soon",
    "background",
    "background-all",
    "background-sync",
]
LIBRARY = [
    "library-none",
    "library-unused",
    "library-immediate",
    "library-after_route",
    "library-after_response",
    "library-all",
    "library-sync",
]
# Both environments measure every variant: each ratio then has its denominator measured
# in the same environment, and the processes of both build and warm the same apps (the
# set of apps alive changes the cost of a request by a few percent, through the GC).
VARIANTS = REFERENCES + LIBRARY
# The fastapi-taskflow environment has no fastapi_tasks: its processes build the references
# and its own apps. Those of TASKFLOW_INSTALLING patch FastAPI process-wide (every
# BackgroundTasks becomes its own), so they run in processes of their own ("taskflow-install"),
# where only they are measured; the references come from the processes without the patch.
TASKFLOW = ["taskflow-depends"]
TASKFLOW_INSTALLING = ["taskflow", "taskflow-eager"]
MICRO = ["library-immediate", "library-after_route", "library-after_response"]
MICRO_REFERENCES = ["create_task", "start_soon"]
# The durable-work section (see ``_durable``). Its instruction counts build these apps
# in every process: non-durable work with and without a journal beside it.
DURABLE_MODES = ["immediate", "after_route", "after_response"]
JOURNAL_BUILT = [
    "bare",
    "background",
    *(f"library-{mode}" for mode in DURABLE_MODES),
    *(f"journal-{mode}" for mode in DURABLE_MODES),
]
DURABLE_LOAD = [
    "arg-background",
    *(f"arg-{mode}" for mode in DURABLE_MODES),
    *(f"durable-{mode}-{sync}" for sync in ("full", "normal") for mode in DURABLE_MODES),
]
DURABLE_BATCH = ["arg-immediate", "durable-immediate-full", "durable-immediate-normal"]
TASKFLOW_LOAD = ["tfmemory-eager", "tfsnapshot-eager", "tfmemory-after", "tfsnapshot-after"]
TASKFLOW_BATCH = ["tfmemory-eager", "tfsnapshot-eager"]


@dataclass(frozen=True)
class Env:
    """A virtual environment the workers run in."""

    key: str
    python: str
    source: str | None = None
    """A folder put first on the workers' path: this checkout's ``src/`` for "current",
    so a git worktree measures its own code whatever the editable install points at."""

    def worker(self, *args: str) -> list[str]:
        return [self.python, "-m", "benchmarks.worker", *args]


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does."""

    count_requests: int
    count_warmup: int
    wall_requests: int
    wall_rounds: int
    micro_calls: int
    e2e_seconds: int
    e2e_rounds: int
    connections: int
    fanout_tasks: int
    rounds: int
    durable_connections: int
    durable_seconds: int
    durable_rounds: int
    durable_batch: int


FULL = Sizes(
    count_requests=600,
    count_warmup=30,
    wall_requests=500,
    wall_rounds=3,
    micro_calls=500,
    e2e_seconds=2,
    e2e_rounds=3,
    connections=16,
    fanout_tasks=100_000,
    rounds=3,
    durable_connections=64,
    durable_seconds=2,
    durable_rounds=2,
    durable_batch=10_000,
)
QUICK = Sizes(
    count_requests=50,
    count_warmup=5,
    wall_requests=50,
    wall_rounds=1,
    micro_calls=200,
    e2e_seconds=1,
    e2e_rounds=1,
    connections=16,
    fanout_tasks=5_000,
    rounds=1,
    durable_connections=64,
    durable_seconds=1,
    durable_rounds=1,
    durable_batch=1_000,
)


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def _environ(env: Env) -> dict[str, str]:
    environ = dict(os.environ)
    environ["PYTHONHASHSEED"] = "0"  # the same dict layouts in every process
    environ.pop("PYTHONPATH", None)
    if env.source is not None:
        environ["PYTHONPATH"] = env.source
    return environ


def run_worker(env: Env, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run one worker to its end and return the JSON it printed."""
    done = subprocess.run(
        env.worker(*args),
        cwd=ROOT,
        env=_environ(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rotated(items: Sequence[str], by: int) -> list[str]:
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


# -- (a) instructions per request ---------------------------------------------------------

_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def _cachegrind(
    env: Env, variants: list[str], measure: str, requests: int, warmup: int, job: int
) -> int:
    out = WORK / f"cachegrind.{os.getpid()}.{job}.out"
    files = WORK / f"cachegrind.{os.getpid()}.{job}.sqlite"  # of apps with a journal
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        f"--cachegrind-out-file={out}",
        *env.worker(
            "count",
            "--variants",
            ",".join(variants),
            "--measure",
            measure,
            "--requests",
            str(requests),
            "--warmup",
            str(warmup),
            "--file",
            str(files),
        ),
    ]
    done = subprocess.run(
        command, cwd=ROOT, env=_environ(env), capture_output=True, text=True, timeout=300
    )
    for file in WORK.glob(f"{files.name}.*"):
        file.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"cachegrind {env.key} {measure} failed:\n{done.stderr[-3000:]}")
    text = out.read_text()
    out.unlink()
    found = _SUMMARY.search(text)
    if found is None:
        raise RuntimeError(f"no summary line in cachegrind output for {measure}")
    return int(found.group(1))


def measure_instructions(
    envs: dict[str, tuple[list[str], list[str]]], all_envs: dict[str, Env], sizes: Sizes
) -> dict[str, Any]:
    """Instructions per request: (count at N requests - count at 0) / N, per variant.

    ``envs`` maps each environment to the variants its processes build and those of
    them it measures. Every process of an environment builds and warms the same apps,
    so the two counts differ only by the N measured requests. The baseline runs twice
    to show the noise.
    """
    jobs: list[tuple[str, str, int]] = []
    for key, (_, variants) in envs.items():
        jobs += [(key, "bare", 0), (key, "bare", 0)]
        jobs += [(key, name, sizes.count_requests) for name in variants]
    counts: dict[tuple[str, str, int], list[int]] = {}

    def one(number: int) -> int:
        key, name, requests = jobs[number]
        built = envs[key][0]
        return _cachegrind(all_envs[key], built, name, requests, sizes.count_warmup, number)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for job, total in zip(jobs, pool.map(one, range(len(jobs))), strict=True):
            counts.setdefault(job, []).append(total)
    result: dict[str, Any] = {}
    for key, (_, variants) in envs.items():
        baselines = counts[(key, "bare", 0)]
        per_env: dict[str, Any] = {
            "baseline": baselines,
            "requests": sizes.count_requests,
            "warmup": sizes.count_warmup,
            "per_request": {},
        }
        for name in variants:
            total = counts[(key, name, sizes.count_requests)][0]
            per_env["per_request"][name] = [
                (total - base) / sizes.count_requests for base in baselines
            ]
        result[key] = per_env
    return result


# -- (a) wall time per request and the schedule() micro benchmarks ------------------------


def measure_inprocess(
    envs: dict[str, tuple[list[str], list[str]]], all_envs: dict[str, Env], sizes: Sizes
) -> dict[str, Any]:
    asgi: dict[str, dict[str, list[float]]] = {key: {} for key in envs}
    cyclic: dict[str, dict[str, list[float]]] = {key: {} for key in envs}
    micro: dict[str, dict[str, list[float]]] = {key: {} for key in envs}
    for round_no in range(sizes.wall_rounds):
        for key in rotated(list(envs), round_no):
            variants, micro_variants = envs[key]
            result = run_worker(
                all_envs[key],
                "inprocess",
                "--variants",
                ",".join(rotated(variants, round_no)),
                "--micro",
                ",".join(micro_variants),
                "--requests",
                str(sizes.wall_requests),
                "--calls",
                str(sizes.micro_calls),
                "--samples",
                "2",
                "--micro-samples",
                "10",
            )
            for name, values in result["asgi"].items():
                asgi[key].setdefault(name, []).extend(values)
            for name, value in result["cyclic"].items():
                cyclic[key].setdefault(name, []).append(value)
            for name, values in result["micro"].items():
                micro[key].setdefault(name, []).extend(values)
    return {"asgi": asgi, "cyclic": cyclic, "micro": micro, "micro_calls": sizes.micro_calls}


# -- (b) end to end -----------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_PERCENTILE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)


def _get(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()


def _get_json(port: int, path: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}")
    found: dict[str, Any] = json.loads(body)
    return found


@contextmanager
def serving(env: Env, variant: str, *options: str) -> Generator[int, None, None]:
    """Serve ``variant`` with uvicorn on 127.0.0.1 (the worker picks a free port); yield it."""
    server = subprocess.Popen(
        env.worker("serve", "--variant", variant, *options),
        cwd=ROOT,
        env=_environ(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        deadline = time.monotonic() + 30
        while True:
            try:
                status = _get(port)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        if status != 200:
            raise RuntimeError(f"{env.key} {variant}: GET / answered {status}")
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _wrk(port: int, seconds: int, connections: int) -> dict[str, float]:
    done = subprocess.run(
        [
            "wrk",
            "--threads",
            "1",
            "--connections",
            str(connections),
            "--duration",
            f"{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rate = _RATE.search(out)
    total = _TOTAL.search(out)
    percentiles = {p: float(v) * _UNITS[u] for p, v, u in _PERCENTILE.findall(out)}
    if rate is None or total is None or set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return {
        "rps": float(rate.group(1)),
        "p50": percentiles["50"],
        "p99": percentiles["99"],
        "requests": float(total.group(1)),
    }


def measure_e2e(
    variants: list[tuple[str, str]], all_envs: dict[str, Env], sizes: Sizes
) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for key, name in variants:
            ports[f"{key}:{name}"] = stack.enter_context(serving(all_envs[key], name))
        for port in ports.values():  # warm up: imports, caches, the interpreter's specializations
            _wrk(port, 1, sizes.connections)
        for round_no in range(sizes.e2e_rounds):
            for label in rotated(list(ports), round_no):
                results.setdefault(label, []).append(
                    _wrk(ports[label], sizes.e2e_seconds, sizes.connections)
                )
    return {"connections": sizes.connections, "seconds": sizes.e2e_seconds, "runs": results}


# -- (c) fan-out and (d) memory -----------------------------------------------------------


def measure_processes(
    command: str, variants: list[tuple[str, str]], all_envs: dict[str, Env], sizes: Sizes
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    labels = [f"{key}:{name}" for key, name in variants]
    for round_no in range(sizes.rounds):
        for label in rotated(labels, round_no):
            key, _, name = label.partition(":")
            result = run_worker(
                all_envs[key],
                command,
                "--variant",
                name,
                "--tasks",
                str(sizes.fanout_tasks),
                timeout=180,
            )
            runs.setdefault(label, []).append(result)
    return {"tasks": sizes.fanout_tasks, "runs": runs}


# -- durable work: the SQLite journal -----------------------------------------------------


def _fresh(folder: Path) -> Path:
    """An empty ``folder`` for this run's SQLite files (on the repository's disk, not a
    tmpfs: ``synchronous="full"`` pays for real syncs)."""
    if folder.exists():
        for file in folder.iterdir():
            file.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def measure_durable_load(
    variants: list[tuple[str, str]], all_envs: dict[str, Env], sizes: Sizes
) -> dict[str, Any]:
    """Each variant served by uvicorn, loaded by wrk; SQLite statements counted per run.

    Variants that keep a file answer ``GET _durable.SQLITE_STATS`` (a route after the
    measured one) with the commits and rows their process wrote so far: read before and
    after every wrk run.
    """
    from ._apps import uses_file
    from ._durable import SQLITE_STATS

    files = _fresh(WORK / "durable-load")
    results: dict[str, list[dict[str, float]]] = {}
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for key, name in variants:
            options = ("--file", str(files / "serve")) if uses_file(name) else ()
            ports[f"{key}:{name}"] = stack.enter_context(serving(all_envs[key], name, *options))
        for port in ports.values():  # warm up
            _wrk(port, 1, sizes.durable_connections)
        for round_no in range(sizes.durable_rounds):
            for label in rotated(list(ports), round_no):
                port = ports[label]
                counted = uses_file(label.partition(":")[2])
                before = _get_json(port, SQLITE_STATS) if counted else {}
                run = _wrk(port, sizes.durable_seconds, sizes.durable_connections)
                if counted:
                    after = _get_json(port, SQLITE_STATS)
                    run.update({key: after[key] - before[key] for key in after})
                results.setdefault(label, []).append(run)
    return {
        "connections": sizes.durable_connections,
        "seconds": sizes.durable_seconds,
        "runs": results,
    }


def measure_durable_batch(
    variants: list[tuple[str, str]], all_envs: dict[str, Env], sizes: Sizes
) -> dict[str, Any]:
    files = _fresh(WORK / "durable-batch")
    runs: dict[str, list[dict[str, Any]]] = {}
    labels = [f"{key}:{name}" for key, name in variants]
    for round_no in range(sizes.durable_rounds):
        for label in rotated(labels, round_no):
            key, _, name = label.partition(":")
            base = files / f"batch{round_no}"
            result = run_worker(
                all_envs[key],
                "batch",
                "--variant",
                name,
                "--tasks",
                str(sizes.durable_batch),
                "--file",
                str(base),
                timeout=180,
            )
            runs.setdefault(label, []).append(result)
    return {"tasks": sizes.durable_batch, "runs": runs}


def run_durable(envs: dict[str, Env], sizes: Sizes) -> dict[str, Any]:
    """The durable-work section: every figure in it, from one run."""
    started = time.monotonic()
    taskflow = "taskflow" in envs

    def step(name: str) -> None:
        log(f"durable work: {name} (at {time.monotonic() - started:.0f} s)")

    filesystem = _output(["stat", "--file-system", "--format=%T", str(WORK)])
    result: dict[str, Any] = {
        "commit": describe_commit(),
        "date": _now(),
        "filesystem": filesystem,
    }
    step("instructions per request, with and without a journal (cachegrind)")
    measured = [name for name in JOURNAL_BUILT if name != "bare"]
    result["instructions"] = measure_instructions(
        {"current": (JOURNAL_BUILT, measured)}, envs, sizes
    )["current"]
    step("requests under load, uvicorn and wrk")
    load = [("current", name) for name in DURABLE_LOAD]
    load += [("taskflow", name) for name in TASKFLOW_LOAD if taskflow]
    result["load"] = measure_durable_load(load, envs, sizes)
    step(f"{sizes.durable_batch:,} tasks from one request")
    batch = [("current", name) for name in DURABLE_BATCH]
    batch += [("taskflow", name) for name in TASKFLOW_BATCH if taskflow]
    result["batch"] = measure_durable_batch(batch, envs, sizes)
    result["seconds"] = time.monotonic() - started
    step("done")
    return result


# -- the machine ----------------------------------------------------------------------------


def _output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except OSError:
        return "not found"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


_PACKAGES = (
    "fastapi-tasks",
    "fastapi-taskflow",
    "fastapi",
    "starlette",
    "anyio",
    "pydantic",
    "uvicorn",
    "python-multipart",
)
# Prints the Python version and the versions of those of _PACKAGES that are installed.
_VERSIONS = f"""
import json, sys
from importlib.metadata import PackageNotFoundError, version
packages = {{}}
for name in {_PACKAGES!r}:
    try:
        packages[name] = version(name)
    except PackageNotFoundError:
        pass
print(json.dumps({{"python": sys.version.split()[0], "packages": packages}}))
"""


def describe_commit() -> str:
    dirty = _output(["git", "status", "--porcelain", "--untracked-files=no"])
    return _output(["git", "rev-parse", "--short", "HEAD"]) + (
        "" if dirty in ("", "not found") else " (with uncommitted changes)"
    )


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def describe_machine(all_envs: dict[str, Env]) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    environments = {
        key: json.loads(_output([env.python, "-c", _VERSIONS])) for key, env in all_envs.items()
    }
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "environments": environments,
        "valgrind": _output(["valgrind", "--version"]),
        "wrk": _output(["wrk", "--version"]).split(" Copyright")[0],
        "commit": describe_commit(),
        "date": _now(),
        "load_before": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--old-python", required=True, help="python of the 0.1.0 environment")
    parser.add_argument(
        "--taskflow-python", default=None, help="python of the fastapi-taskflow environment"
    )
    parser.add_argument(
        "--taskflow-version", default="0.12.1", help="the fastapi-taskflow version it holds"
    )
    parser.add_argument(
        "--taskflow-note", default=None, help="how it was installed, or why it is missing"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument(
        "--only",
        choices=["durable"],
        default=None,
        help="run one section: its results replace the same section of the last full "
        "run's, and of the page",
    )
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--report-only", action="store_true", help="re-render the last results.json"
    )
    parser.add_argument(
        "--started", type=float, default=None, help="epoch seconds the whole run began at"
    )
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    results_file = WORK / ("results-quick.json" if args.quick else "results.json")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    taskflow = Taskflow(args.taskflow_version, args.taskflow_python, args.taskflow_note)
    if args.only == "durable":
        envs, skipped = environments(args.old_python, taskflow)
        durable = run_durable(envs, sizes)
        durable["quick"] = args.quick
        durable["taskflow"] = {"version": taskflow.version, "note": skipped}
        durable["machine"] = describe_machine(envs)
        if results_file.exists():  # a later --report-only keeps it
            results = json.loads(results_file.read_text())
            results["durable"] = durable
            results_file.write_text(json.dumps(results, indent=1))
        (WORK / ("durable-quick.json" if args.quick else "durable.json")).write_text(
            json.dumps(durable, indent=1)
        )
        page = output.read_text() if output.exists() else ""
        output.write_text(splice(page, render_durable(durable)))
        log(f"wrote the durable work section of {output}")
        return
    if args.report_only:
        results = json.loads(results_file.read_text())
    else:
        results = run_all(args.old_python, taskflow, sizes, args.quick)
        if args.started is not None:  # count the installs too
            results["seconds"] = time.time() - args.started
        results_file.write_text(json.dumps(results, indent=1))
    output.write_text(render(results))
    log(f"wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")


@dataclass(frozen=True)
class Taskflow:
    """The fastapi-taskflow reference: its version, its environment's python if there is one."""

    version: str
    python: str | None
    note: str | None
    """How it was installed when that matters, or why it is not there."""


def check_taskflow(taskflow: Taskflow) -> str | None:
    """Why fastapi-taskflow cannot be measured here, or ``None`` when it can."""
    if taskflow.python is None:
        return taskflow.note or "its environment was not built"
    env = Env("taskflow", taskflow.python)
    for variant in TASKFLOW + TASKFLOW_INSTALLING:
        try:
            run_worker(env, "fanout", "--variant", variant, "--tasks", "10", timeout=60)
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            return f"its {variant} app failed: {lines[-1] if lines else type(error).__name__}"
    return None


def environments(old_python: str, taskflow: Taskflow) -> tuple[dict[str, Env], str | None]:
    """The environments to run workers in; why fastapi-taskflow's is missing, if it is."""
    envs = {
        "current": Env("current", sys.executable, str(ROOT / "src")),
        "0.1.0": Env("0.1.0", old_python),
    }
    skipped = check_taskflow(taskflow)
    if skipped is None:
        assert taskflow.python is not None
        envs["taskflow"] = Env("taskflow", taskflow.python)
    else:
        log(f"fastapi-taskflow {taskflow.version} not measured: {skipped}")
    return envs, skipped


def run_all(old_python: str, taskflow: Taskflow, sizes: Sizes, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    envs, skipped = environments(old_python, taskflow)
    results: dict[str, Any] = {
        "quick": quick,
        "machine": describe_machine(envs),
        "taskflow": {
            "version": taskflow.version,
            "measured": skipped is None,
            "note": taskflow.note if skipped is None else skipped,
        },
    }
    measured: dict[str, tuple[list[str], list[str]]] = {}
    with_taskflow: list[tuple[str, str]] = []
    if skipped is None:
        # The same environment, in processes where FastAPI is patched (see TASKFLOW_INSTALLING).
        envs["taskflow-install"] = Env("taskflow-install", envs["taskflow"].python)
        measured = {
            "taskflow": (REFERENCES + TASKFLOW, ["create_task", "background", *TASKFLOW]),
            "taskflow-install": (REFERENCES + TASKFLOW_INSTALLING, TASKFLOW_INSTALLING),
        }
        with_taskflow = [("taskflow-install", name) for name in TASKFLOW_INSTALLING]

    def step(name: str) -> None:
        log(f"{name} (at {time.monotonic() - started:.0f} s)")

    step("(a) instructions per request, cachegrind")
    results["instructions"] = measure_instructions(
        {"current": (VARIANTS, VARIANTS), "0.1.0": (VARIANTS, VARIANTS), **measured}, envs, sizes
    )
    step("(a) wall time per request and schedule() calls")
    results["inprocess"] = measure_inprocess(
        {
            "current": (VARIANTS, MICRO + MICRO_REFERENCES),
            "0.1.0": (VARIANTS, MICRO + MICRO_REFERENCES),
        },
        envs,
        sizes,
    )
    step("(b) end to end, uvicorn and wrk")
    results["e2e"] = measure_e2e(
        [
            ("current", "bare"),
            ("current", "background"),
            ("current", "library-immediate"),
            ("current", "library-after_route"),
            ("current", "library-after_response"),
            ("current", "library-all"),
            ("0.1.0", "library-immediate"),
            ("0.1.0", "library-all"),
        ],
        envs,
        sizes,
    )
    step("(c) fan-out")
    results["fanout"] = measure_processes(
        "fanout",
        [
            ("current", "create_task"),
            ("current", "start_soon"),
            ("current", "background"),
            ("current", "library-immediate"),
            ("current", "monitor-immediate"),
            ("current", "library-after_route"),
            ("current", "library-after_response"),
            ("0.1.0", "library-immediate"),
            ("0.1.0", "library-after_response"),
            *with_taskflow,
        ],
        envs,
        sizes,
    )
    step("(d) memory per pending task")
    results["memory"] = measure_processes(
        "memory",
        [
            ("current", "create_task"),
            ("current", "start_soon"),
            ("current", "library-immediate"),
            ("0.1.0", "library-immediate"),
        ],
        envs,
        sizes,
    )
    step("durable work")
    results["durable"] = run_durable(envs, sizes)
    results["durable"]["quick"] = quick
    results["durable"]["taskflow"] = {"version": taskflow.version, "note": skipped}
    results["seconds"] = time.monotonic() - started
    results["machine"]["load_after"] = os.getloadavg()[0]
    step("done")
    return results


if __name__ == "__main__":
    main()
