"""Turn the results of ``benchmarks.run`` into ``docs/benchmarks.md``."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DURABLE_HEADING", "render", "render_durable", "splice"]

X = "\N{MULTIPLICATION SIGN}"
TO = "\N{EN DASH}"
MINUS = "\N{MINUS SIGN}"

LABELS = {
    "bare": "bare endpoint, no background work",
    "depends": "one trivial FastAPI dependency, no background work",
    "create_task": "that dependency + `loop.create_task(work())` (floor)",
    "start_soon": "a dependency + anyio `task_group.start_soon(work)` (floor)",
    "background": "`BackgroundTasks`, 1 async task",
    "background-all": "`BackgroundTasks`, 3 async tasks",
    "background-sync": "`BackgroundTasks`, 1 `def` task",
    "library-none": "`add_tasks(app)`, endpoint without `Tasks`",
    "library-unused": "`tasks: Tasks`, nothing scheduled",
    "library-immediate": "`tasks.schedule(work)`",
    "library-after_route": "`tasks.after_route.schedule(work)`",
    "library-after_response": "`tasks.after_response.schedule(work)`",
    "library-all": "all three modes, one task each",
    "library-sync": "`tasks.schedule(def_work)`",
    "monitor-immediate": "`tasks.schedule(work)`, monitor included and streaming",
    "taskflow": "`install(app)`, `background_tasks.add_task(work)` (after the response)",
    "taskflow-eager": "`install(app)`, `background_tasks.add_task(work, eager=True)` (at once)",
    "taskflow-depends": "`tasks.add_task(work)`, `tasks` from `Depends(task_manager.get_tasks)`",
}
# How the rows measured in the other environments name them.
ENVIRONMENTS = {
    "0.1.0": "the 0.1.0 environment",
    "taskflow": "the fastapi-taskflow environment",
    "taskflow-install": "the fastapi-taskflow environment, patched by `install()`",
}
# Where an environment's ratios take their denominators from: the processes patched by
# fastapi-taskflow's install() have no plain BackgroundTasks.
REFERENCE_ENV = {"taskflow-install": "taskflow"}
# The BackgroundTasks request doing the same amount of work as each variant.
SAME_WORK = {
    "library-all": "background-all",
    "background-all": "background-all",
    "library-sync": "background-sync",
    "background-sync": "background-sync",
}
MODES = ("library-immediate", "library-after_route", "library-after_response")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median (min-max)`` of ``values`` times ``scale``."""
    scaled = [value * scale for value in values]
    median = f"{_median(scaled):,.{digits}f}"
    if len(scaled) == 1:
        return median
    return f"{median} ({min(scaled):,.{digits}f}{TO}{max(scaled):,.{digits}f})"


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}{X}"


def _shown(key: str, variant: str) -> bool:
    """Whether a row appears: the other environments show their library rows and references."""
    if key == "current" or variant.startswith(("library-", "taskflow")):
        return True
    if key == "0.1.0":
        return variant == "background"
    return key == "taskflow" and variant in ("background", "create_task")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


class _Report:
    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        machine = results["machine"]
        self.versions: dict[str, str] = {
            key: env["packages"].get("fastapi-tasks", "")
            for key, env in machine["environments"].items()
        }
        # Results from before fastapi-taskflow was a reference have no entry for it.
        self.taskflow: dict[str, Any] = results.get("taskflow") or {
            "version": "0.12.1",
            "measured": False,
            "note": "this run predates it",
        }

    def library(self, key: str) -> str:
        suffix = " (this repo)" if key == "current" else " (PyPI wheel)"
        return f"fastapi-tasks {self.versions[key]}{suffix}"

    def label(self, key: str, variant: str) -> str:
        if variant.startswith(("library-", "monitor-")):
            return f"{self.library(key)}: {LABELS[variant]}"
        if variant.startswith("taskflow"):
            return f"fastapi-taskflow {self.taskflow['version']} (PyPI wheel): {LABELS[variant]}"
        if key != "current":
            return f"{LABELS[variant]} — in {ENVIRONMENTS[key]}"
        return LABELS[variant]

    @property
    def taskflow_measured(self) -> bool:
        return bool(self.taskflow["measured"])

    def taskflow_section(self) -> list[str]:
        """What fastapi-taskflow's API was mapped to, or why it is missing."""
        version = self.taskflow["version"]
        note = self.taskflow["note"]
        if not self.taskflow_measured:
            return [
                f"**fastapi-taskflow {version} was not measured in this run: {note}.** "
                "Its rows are missing below.",
                "",
            ]
        installed = (
            "with the same FastAPI, Starlette, anyio and uvicorn versions"
            if note is None
            else f"where {note} (see the versions under Machine)"
        )
        return [
            f"fastapi-taskflow {version}, the nearest in-process peer (retries, task records and "
            f"a dashboard on top of `BackgroundTasks`), runs in a third virtual environment "
            f"{installed}. Its API was mapped as follows. A process has one `TaskManager()` "
            "with its defaults (in memory only, no loggers, no queues), started by "
            "`task_manager.init_app(app)`; the no-op work is registered with "
            "`@task_manager.task()` (no retries). As in its quick start, "
            "`task_manager.install(app)` (what `TaskAdmin(..., auto_install=True)` does) makes "
            "FastAPI inject its `ManagedBackgroundTasks` wherever an endpoint asks for "
            "`BackgroundTasks`, whose `add_task(work)` appends a wrapper that runs after the "
            "response: the counterpart of `tasks.after_response.schedule(work)`. "
            "`add_task(work, eager=True)` starts it with `asyncio.create_task` at once: the "
            "counterpart of `tasks.schedule(work)`. That patch is process-wide, so those two run "
            "in processes of their own, and their ratios use the `BackgroundTasks` request "
            "measured in the same environment without the patch (its processes build the "
            "reference apps and fastapi-taskflow's, not ours). Its other pattern, "
            "`Depends(task_manager.get_tasks)`, is measured too: `get_tasks` is a `def`, so "
            "FastAPI calls it in a worker thread on every request. Measured: instructions per "
            "request and the fan-out. Not measured: its persistence (`snapshot_db=` SQLite, or a "
            "Redis, PostgreSQL or MySQL backend), retries, the `TaskAdmin` dashboard and "
            "routes, and its named and priority queues.",
            "",
        ]

    # -- (a) -------------------------------------------------------------------------------

    def instructions(self, key: str, variant: str) -> list[float]:
        values: list[float] = self.results["instructions"][key]["per_request"][variant]
        return values

    def instruction_ratio(self, key: str, variant: str, reference: str = "background") -> float:
        own = _median(self.instructions(REFERENCE_ENV.get(key, key), reference))
        return _median(self.instructions(key, variant)) / own

    def instructions_section(self) -> list[str]:
        data = self.results["instructions"]
        requests = data["current"]["requests"]
        rows: list[list[str]] = []
        noise: list[float] = []
        for key, per_env in data.items():
            base = per_env["baseline"]
            noise.append(abs(base[0] - base[1]) / per_env["requests"])
            for variant in per_env["per_request"]:
                if not _shown(key, variant):
                    continue
                same = SAME_WORK.get(variant, "background")
                rows.append(
                    [
                        self.label(key, variant),
                        _spread(self.instructions(key, variant), 1e-3),
                        f"{self.instruction_ratio(key, variant):.2f}{X}",
                        f"{self.instruction_ratio(key, variant, same):.2f}{X}"
                        + ("" if same == "background" else f" (vs {LABELS[same]})"),
                    ]
                )
        lines = [
            "## (a) Cost of one request over raw ASGI",
            "",
            "Each app is called directly with a prepared scope, `receive` and `send` (no sockets), "
            "and the driver waits until the request's work ran. The measured route is the only "
            "route of its app (no docs routes ahead of it). Every task is a no-op `async def` "
            "(or `def`) that bumps a counter.",
            "",
            "### Instructions per request",
            "",
            "`valgrind --tool=cachegrind --cache-sim=no`; per request = (count at "
            f"{requests:,} requests {MINUS} count at 0 requests) / {requests:,}. "
            "Every process builds and warms up the same apps "
            f"({data['current']['warmup']} requests each) before the measured requests, so the "
            "two counts differ only by those requests (`PYTHONHASHSEED=0` in every process). "
            "The baseline runs twice: the two differ by "
            f"{max(noise):.0f} instructions per request at most (the min{TO}max below). Changing "
            "any code moves the memory layout, and with it id-based hashing and allocation: "
            "unrelated variants then move by up to about 1%, so compare versions of the "
            "library by differences larger than that. Ratios use the `BackgroundTasks` request "
            "measured in the same environment.",
            "",
        ]
        lines += _table(
            [
                "variant",
                "thousand instructions / request",
                f"{X} `BackgroundTasks`, 1 task",
                f"{X} `BackgroundTasks` doing the same work",
            ],
            rows,
        )
        return lines

    def wall_section(self) -> list[str]:
        data = self.results["inprocess"]["asgi"]
        cyclic = self.results["inprocess"]["cyclic"]
        reference = _median(data["current"]["background"])
        rows: list[list[str]] = []
        for key, per_env in data.items():
            own = _median(per_env["background"])
            for variant, values in per_env.items():
                if not _shown(key, variant):
                    continue
                rows.append(
                    [
                        self.label(key, variant),
                        _spread(values, 1e6),
                        _ratio(_median(values), own),
                        f"{max(cyclic[key][variant]):.0f}",
                    ]
                )
        rounds = len(data["current"]["bare"])
        lines = [
            "",
            "### Wall time per request",
            "",
            f"The same requests without valgrind: µs per request, median (min{TO}max) of "
            f"{rounds} samples from interleaved rounds (one process per environment and round). "
            "Wall time on this shared machine swings by about 30%; the instruction counts above "
            "are the figures to compare designs with. "
            f"(`BackgroundTasks` here: {reference * 1e6:.1f} µs.)",
            "",
            "The last column counts the objects each request leaves that reference counting "
            "cannot free (reference cycles): `gc.collect()` after requests sent with the "
            "collector paused, per request. Such garbage makes the collector run, and its full "
            "collections (tens of ms with FastAPI loaded) show up as p99 latency in (b).",
            "",
        ]
        lines += _table(
            [
                "variant",
                "µs / request",
                f"{X} `BackgroundTasks`",
                "cyclic garbage, objects / request",
            ],
            rows,
        )
        return lines

    # -- micro -----------------------------------------------------------------------------

    def micro(self, key: str, variant: str) -> list[float]:
        values: list[float] = self.results["inprocess"]["micro"][key][variant]
        return values

    def micro_section(self) -> list[str]:
        data = self.results["inprocess"]["micro"]
        rows: list[list[str]] = []
        for key, per_env in data.items():
            raw = _median(self.micro(key, "create_task"))
            for variant, values in per_env.items():
                if not _shown(key, variant):
                    continue
                rows.append(
                    [
                        self.label(key, variant),
                        _spread(values, 1e6, 2),
                        _ratio(_median(values), raw),
                    ]
                )
        return [
            "",
            "## `schedule()` call cost",
            "",
            f"Inside one endpoint, a loop of {self.results['inprocess']['micro_calls']} calls "
            "timed with `perf_counter`, with the garbage collector paused as `timeit` does "
            "(what the collector costs per task shows in the fan-out scenario); µs per call, "
            f"median (min{TO}max) over 10 samples per process from interleaved rounds. The "
            "work runs after the measurement. The raw references create the coroutine too "
            "(`loop.create_task(work())`). Ratios use `loop.create_task` measured in the same "
            "process.",
            "",
            *_table(["call", "µs / call", f"{X} `loop.create_task`"], rows),
        ]

    # -- (b) -------------------------------------------------------------------------------

    def e2e_section(self) -> list[str]:
        data = self.results["e2e"]
        runs: dict[str, list[dict[str, float]]] = data["runs"]
        reference = _median([run["rps"] for run in runs["current:background"]])
        rows: list[list[str]] = []
        for label, values in runs.items():
            key, _, variant = label.partition(":")
            rps = [run["rps"] for run in values]
            rows.append(
                [
                    self.label(key, variant),
                    _spread(rps, 1.0, 0),
                    _ratio(_median(rps), reference),
                    _spread([run["p50"] for run in values], 1e3, 2),
                    _spread([run["p99"] for run in values], 1e3, 2),
                ]
            )
        return [
            "",
            "## (b) End to end: uvicorn and wrk",
            "",
            "One uvicorn process per variant (defaults: asyncio loop, h11), listening on "
            "127.0.0.1 on a port the system picked; `wrk --threads 1 --connections "
            f"{data['connections']} --duration {data['seconds']}s --latency`, after a 1 s warm-up. "
            f"Median (min{TO}max) over {len(runs['current:bare'])} interleaved rounds. Server and "
            "load generator share the 2 cores, so these figures are the noisiest here.",
            "",
            *_table(
                ["variant", "requests / s", f"{X} `BackgroundTasks`", "p50 ms", "p99 ms"],
                rows,
            ),
        ]

    # -- (c), (d) ----------------------------------------------------------------------------

    def runs(self, scenario: str, label: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.results[scenario]["runs"][label]
        return runs

    def field(self, scenario: str, label: str, name: str) -> list[float]:
        return [float(run[name]) for run in self.runs(scenario, label)]

    def fanout_section(self) -> list[str]:
        data = self.results["fanout"]
        tasks: int = data["tasks"]
        raw = _median(self.field("fanout", "current:create_task", "done"))
        rows: list[list[str]] = []
        for label in data["runs"]:
            key, _, variant = label.partition(":")
            done = self.field("fanout", label, "done")
            growth = [run["peak_rss"] - run["rss_before"] for run in self.runs("fanout", label)]
            rows.append(
                [
                    self.label(key, variant),
                    _spread(self.field("fanout", label, "schedule"), 1e6 / tasks, 2),
                    _spread(self.field("fanout", label, "response"), 1.0, 2),
                    _spread(done, 1.0, 2),
                    _spread(done, 1e6 / tasks, 2),
                    _ratio(_median(done), raw),
                    _spread(growth, 1 / 2**20, 0),
                ]
            )
        return [
            "",
            f"## (c) Fan-out: one request schedules {tasks:,} no-op tasks",
            "",
            "A fresh process per run; after a warm-up, one request runs a loop of "
            f'{tasks:,} scheduling calls. Times from the start of the request; "all ran" is '
            "when the last task finished. Peak RSS growth is the process's peak resident set "
            f"(`ru_maxrss`) minus its resident set just before the request. Median (min{TO}max) "
            f"over {len(data['runs']['current:create_task'])} interleaved rounds.",
            "",
            *_table(
                [
                    "variant",
                    "scheduling µs / task",
                    "response sent after s",
                    "all ran after s",
                    "all ran, µs / task",
                    f"{X} `create_task`",
                    "peak RSS growth MiB",
                ],
                rows,
            ),
        ]

    def monitor_section(self) -> list[str]:
        data = self.results["fanout"]
        tasks: int = data["tasks"]
        runs = data["runs"]
        if "current:monitor-immediate" not in runs:
            return []
        without = _median(self.field("fanout", "current:library-immediate", "done"))
        with_monitor = self.field("fanout", "current:monitor-immediate", "done")
        rates = [
            run["stream_messages"] / run["stream_seconds"]
            for run in self.runs("fanout", "current:monitor-immediate")
        ]
        messages = [
            run["stream_messages"] for run in self.runs("fanout", "current:monitor-immediate")
        ]
        return [
            "",
            "## (e) The monitor's cost",
            "",
            f"The fan-out of (c), {tasks:,} no-op tasks from one request, with the monitor "
            "included (`monitor_router()`: its state listens to every finished task) and one "
            "client reading its live stream (`/tasks/api/stream`) meanwhile, against the same "
            "run without it. Stream messages are counted from the start of the request until "
            "one second after the last task finished: a burst of ready tasks leaves the stream "
            "no turn on the event loop until it is over, and the stream never sends more than "
            "4 a second.",
            "",
            *_table(
                [
                    "variant",
                    "all ran after s",
                    f"{X} without the monitor",
                    "stream messages",
                    "stream messages / s",
                ],
                [
                    [
                        LABELS["library-immediate"],
                        f"{without:.2f}",
                        f"1.00{X}",
                        TO,
                        TO,
                    ],
                    [
                        LABELS["monitor-immediate"],
                        _spread(with_monitor, 1.0, 2),
                        _ratio(_median(with_monitor), without),
                        _spread(messages, 1.0, 0),
                        _spread(rates, 1.0, 1),
                    ],
                ],
            ),
        ]

    def memory_section(self) -> list[str]:
        data = self.results["memory"]
        tasks: int = data["tasks"]
        raw = _median(self.field("memory", "current:create_task", "per_task"))
        rows: list[list[str]] = []
        for label in data["runs"]:
            key, _, variant = label.partition(":")
            per_task = self.field("memory", label, "per_task")
            rows.append(
                [
                    self.label(key, variant),
                    _spread(per_task, 1.0, 0),
                    _ratio(_median(per_task), raw),
                ]
            )
        return [
            "",
            f"## (d) Memory per pending task, {tasks:,} tasks waiting",
            "",
            f"A fresh process per run; one request schedules {tasks:,} tasks that all start "
            "and then wait on one `asyncio.Event`. Bytes per task = growth of the resident set "
            "(from `/proc/self/statm`, after `gc.collect()`) between just before the request and "
            f"the moment all tasks wait, divided by the number of tasks. Median (min{TO}max) over "
            f"{len(data['runs']['current:create_task'])} interleaved rounds.",
            "",
            *_table(["variant", "bytes / pending task", f"{X} `create_task`"], rows),
        ]

    # -- the targets -------------------------------------------------------------------------

    def summary_section(self) -> list[str]:
        rows: list[list[str]] = []

        def verdict(ok: bool) -> str:
            return "met" if ok else "**missed**"

        def add(figure: str, target: str, measured: str, reference: str, ok: bool) -> None:
            rows.append([figure, target, measured, reference, verdict(ok)])

        floor = self.instruction_ratio("current", "create_task")
        dependency = (
            _median(self.instructions("current", "depends"))
            - _median(self.instructions("current", "bare"))
        ) / _median(self.instructions("current", "background"))
        # Where fastapi-taskflow has the counterpart of a mode.
        peers = {
            "library-immediate": ("taskflow-eager", "`add_task(work, eager=True)`"),
            "library-after_response": ("taskflow", "`add_task(work)`"),
        }
        for variant in MODES:
            ratio = self.instruction_ratio("current", variant)
            old = self.instruction_ratio("0.1.0", variant)
            taskflow = ""
            if variant in peers and self.taskflow_measured:
                peer, call = peers[variant]
                taskflow = (
                    f"; fastapi-taskflow {call}: "
                    f"{self.instruction_ratio('taskflow-install', peer):.2f}{X}"
                )
            add(
                f"request with one task, {LABELS[variant]}, {X} `BackgroundTasks` (instructions)",
                f"≤ 1.35{X}",
                f"{ratio:.2f}{X}",
                f"0.1.0: {old:.2f}{X}; floor (dependency + `create_task`): {floor:.2f}{X}; "
                f"FastAPI's dependency machinery alone: {dependency:.2f}{X}{taskflow}",
                ratio <= 1.35,
            )
        ratio = self.instruction_ratio("current", "library-all")
        same = self.instruction_ratio("current", "library-all", "background-all")
        add(
            f"all three modes in one request, {X} `BackgroundTasks` with 1 task (instructions)",
            f"≤ 1.7{X}",
            f"{ratio:.2f}{X} ({same:.2f}{X} `BackgroundTasks` with 3 tasks)",
            f"0.1.0: {self.instruction_ratio('0.1.0', 'library-all'):.2f}{X} "
            f"({self.instruction_ratio('0.1.0', 'library-all', 'background-all'):.2f}{X})",
            ratio <= 1.7,
        )
        for variant in MODES[1:]:
            value = _median(self.micro("current", variant)) * 1e6
            add(
                f"`{variant.split('-')[1]}.schedule()` call",
                "≤ 5 µs",
                f"{value:.2f} µs",
                f"0.1.0: {_median(self.micro('0.1.0', variant)) * 1e6:.2f} µs",
                value <= 5,
            )
        raw = _median(self.micro("current", "create_task"))
        value = _median(self.micro("current", "library-immediate"))
        old = _median(self.micro("0.1.0", "library-immediate"))
        old_raw = _median(self.micro("0.1.0", "create_task"))
        add(
            f"immediate `schedule()` call, {X} `loop.create_task`",
            f"≤ 2{X}",
            f"{value / raw:.2f}{X} ({value * 1e6:.2f} µs vs {raw * 1e6:.2f} µs)",
            f"0.1.0: {old * 1e6:.2f} µs ({old / old_raw:.2f}{X}); anyio `start_soon`: "
            f"{_median(self.micro('current', 'start_soon')) * 1e6:.2f} µs",
            value / raw <= 2,
        )
        tasks: int = self.results["fanout"]["tasks"]

        def per_task(label: str) -> float:
            return _median(self.field("fanout", label, "done")) * 1e6 / tasks

        raw = per_task("current:create_task")
        value = per_task("current:library-immediate")
        taskflow = ""
        if self.taskflow_measured:
            taskflow = (
                "; fastapi-taskflow `eager=True`: "
                f"{per_task('taskflow-install:taskflow-eager'):.2f} µs / task"
            )
        add(
            f"{tasks:,} no-op tasks from one request (immediate), all done, {X} `create_task`",
            f"≤ 2{X}",
            f"{value / raw:.2f}{X} ({value:.2f} vs {raw:.2f} µs / task)",
            f"anyio `start_soon`: {per_task('current:start_soon'):.2f} µs / task; 0.1.0: "
            f"{per_task('0.1.0:library-immediate'):.2f} µs / task{taskflow}",
            value / raw <= 2,
        )
        if "current:monitor-immediate" in self.results["fanout"]["runs"]:
            monitored = per_task("current:monitor-immediate")
            add(
                f"{tasks:,} no-op tasks with the monitor included, {X} without",
                f"≤ 1.15{X}",
                f"{monitored / value:.2f}{X} ({monitored:.2f} vs {value:.2f} µs / task)",
                "the stream's rate: see (e)",
                monitored / value <= 1.15,
            )
        tasks = self.results["memory"]["tasks"]

        def per_pending(label: str) -> float:
            return _median(self.field("memory", label, "per_task"))

        raw = per_pending("current:create_task")
        value = per_pending("current:library-immediate")
        add(
            f"memory for {tasks:,} pending tasks, {X} `create_task`",
            f"≤ 2{X}",
            f"{value / raw:.2f}{X} ({value:,.0f} vs {raw:,.0f} bytes / task)",
            f"0.1.0: {per_pending('0.1.0:library-immediate'):,.0f} bytes / task; anyio "
            f"`start_soon`: {per_pending('current:start_soon'):,.0f}",
            value / raw <= 2,
        )
        return [
            "## Targets and results",
            "",
            "Each target from the list above, what this run measured, and the same figure "
            "for the references.",
            "",
            *_table(
                ["figure", "target", "measured", "reference points measured here", "verdict"],
                rows,
            ),
        ]

    def machine_section(self) -> list[str]:
        machine = self.results["machine"]
        lines = [
            "",
            "## Machine",
            "",
            f"- CPU: {machine['cpu']}, {machine['cores']} cores; Linux {machine['kernel']}",
        ]
        for key, env in machine["environments"].items():
            packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items())
            name = "fastapi-taskflow" if key == "taskflow" else key
            lines.append(f"- {name} environment: Python {env['python']}; {packages}")
        lines += [
            f"- {machine['valgrind']}; {machine['wrk']}",
            f"- commit {machine['commit']}, {machine['date']}; the run took "
            f"{self.results['seconds'] / 60:.1f} minutes",
            f"- 1-minute load average {machine['load_before']:.2f} before the run (the "
            f"benchmark's own load: {machine['load_after']:.2f} after it); anything else busy "
            "on the machine during the run shows in the wall-time figures, not in the "
            "instruction counts",
        ]
        return lines


# What the project holds itself to, explained for a reader who has only this page.
TARGETS = [
    "## Targets",
    "",
    "Every target compares the library with the cheapest way to get the same effect, "
    "measured in the same run on the same machine, so the ratios carry over to other "
    "machines better than the absolute numbers do.",
    "",
    "- **A request that schedules one task** costs at most 1.35 times the CPU instructions of "
    "the same request with one `BackgroundTasks` task, in each of the three modes. Any "
    "library that takes a FastAPI dependency and creates an asyncio task pays about 1.3 times "
    "(the floor in the tables), so the target leaves little above that.",
    "- **All three modes in one request** cost at most 1.7 times that one `BackgroundTasks` task.",
    "- **A `schedule()` call for later** (after route, after response) takes at most 5 µs: "
    "it only records the work.",
    "- **An immediate `schedule()` call** takes at most twice a `loop.create_task` call, the "
    "step it cannot avoid on asyncio.",
    "- **Fan-out:** 100,000 no-op tasks scheduled by one request have all finished within "
    "twice the time of as many `create_task` calls.",
    "- **Memory:** 100,000 tasks waiting at once take at most twice the memory of as many "
    "bare asyncio tasks.",
    "",
    "Where designs are compared, CPU instructions are counted (with valgrind) instead of "
    "timed: on the shared 2-core machines these runs use, wall time varies by about 30% from "
    "one run to the next, while instruction counts repeat to within a fraction of a percent.",
    "",
]


def render(results: dict[str, Any]) -> str:
    """The Markdown page for ``results``."""
    report = _Report(results)
    sections: list[Callable[[], list[str]]] = [
        report.summary_section,
        report.instructions_section,
        report.wall_section,
        report.micro_section,
        report.e2e_section,
        report.fanout_section,
        report.monitor_section,
        report.memory_section,
        report.machine_section,
    ]
    if "durable" in results:
        sections.append(lambda: _Durable(results["durable"], report).section())
    lines = [
        "# Benchmarks",
        "",
        "What background work costs with this library, next to what a FastAPI user would "
        "otherwise reach for: Starlette's `BackgroundTasks`, a bare `loop.create_task`, an "
        "anyio task group, the older `fastapi-tasks` 0.1.0 from PyPI, and fastapi-taskflow "
        "from PyPI. `scripts/bench` writes this page; run it again rather than editing the "
        "page by hand:",
        "",
        "```console",
        "$ scripts/bench",
        "```",
        "",
        "It installs what it needs (the project's `.venv`; a second virtual environment with "
        "the `fastapi-tasks==0.1.0` wheel from PyPI and the same FastAPI, Starlette, anyio and "
        "uvicorn versions; Debian's `valgrind` and `wrk`), runs every scenario below in one go, "
        "and rewrites this page. The 0.1.0 wheel has the same import name, so its "
        "measurements run in processes of their own, driven by the same harness "
        "(`benchmarks/worker.py`).",
        "",
        *report.taskflow_section(),
        *TARGETS,
    ]
    if results.get("quick"):
        lines += ["**Smoke run with tiny sizes (`--quick`): these numbers mean nothing.**", ""]
    for section in sections:
        lines += section()
        lines.append("")
    return "\n".join(lines)


# -- durable work ----------------------------------------------------------------------------

DURABLE_HEADING = "## Durable work: the SQLite journal"
DISTRIBUTED_HEADING = "## Distributed mode"
DURABLE_TARGET = 100.0
"""µs a durable task may cost above the same non-durable task, under load (our target)."""

DURABLE_MODES = ("immediate", "after_route", "after_response")
DURABLE_LABELS = {
    "arg-background": "`BackgroundTasks`: `add_task(noop, i)`",
    "tfmemory-eager": "fastapi-taskflow in memory: `add_task(noop, i, eager=True)`",
    "tfsnapshot-eager": "fastapi-taskflow, `snapshot_db=` SQLite: `add_task(noop, i, eager=True)`",
    "tfmemory-after": "fastapi-taskflow in memory: `add_task(noop, i)` (after the response)",
    "tfsnapshot-after": "fastapi-taskflow, `snapshot_db=` SQLite: `add_task(noop, i)` "
    "(after the response)",
}
# Each durable variant's non-durable counterpart: the same call without what persists it.
DURABLE_PEERS = {
    "tfsnapshot-eager": "tfmemory-eager",
    "tfsnapshot-after": "tfmemory-after",
    **{
        f"durable-{mode}-{sync}": f"arg-{mode}"
        for mode in DURABLE_MODES
        for sync in ("full", "normal")
    },
}


def _scheduler(mode: str) -> str:
    return "tasks" if mode == "immediate" else f"tasks.{mode}"


def durable_label(variant: str) -> str:
    if variant in DURABLE_LABELS:
        return DURABLE_LABELS[variant]
    impl, _, rest = variant.partition("-")
    mode, _, sync = rest.partition("-")
    if impl == "arg":
        return f"`{_scheduler(mode)}.schedule(noop, i)`"
    return f'`{_scheduler(mode)}.task(durable=True).schedule(noop, i)`, `synchronous="{sync}"`'


def splice(page: str, section: str) -> str:
    """``page`` with its durable-work section replaced by ``section`` (or added).

    The section runs from its heading to the next level-2 heading; a new one goes before
    the distributed section (written by ``benchmarks.taskiq_enqueue``), else at the end.
    """
    section = section.rstrip() + "\n"
    lines = page.splitlines(keepends=True)
    start = next((n for n, line in enumerate(lines) if line.startswith(DURABLE_HEADING)), None)
    if start is not None:
        end = next(
            (n for n in range(start + 1, len(lines)) if lines[n].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        return "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    at = next((n for n, line in enumerate(lines) if line.startswith(DISTRIBUTED_HEADING)), None)
    if at is None:
        head = page.rstrip()
        return (head + "\n\n" if head else "") + section
    return "".join(lines[:at]) + section + "\n" + "".join(lines[at:])


def render_durable(durable: dict[str, Any]) -> str:
    """The durable-work section alone, from a run of ``--only durable``."""
    return "\n".join(_Durable(durable, None).section()) + "\n"


class _Durable:
    def __init__(self, data: dict[str, Any], report: _Report | None) -> None:
        self.data = data
        self.report = report  # None: a run of this section alone, which names its machine

    def per_request(self, label: str) -> float:
        """µs of the server per request at saturation: 1e6 / requests per second."""
        return 1e6 / _median([run["rps"] for run in self.data["load"]["runs"][label]])

    def extra(self, label: str) -> float | None:
        """µs per task above the same request without persistence, or None."""
        key, _, variant = label.partition(":")
        peer = DURABLE_PEERS.get(variant)
        if peer is None or f"{key}:{peer}" not in self.data["load"]["runs"]:
            return None
        return self.per_request(label) - self.per_request(f"{key}:{peer}")

    def label(self, label: str) -> str:
        return durable_label(label.partition(":")[2])

    def section(self) -> list[str]:
        lines = [DURABLE_HEADING, ""]
        if self.data.get("quick"):
            lines += ["**Smoke run with tiny sizes (`--quick`): these numbers mean nothing.**", ""]
        lines += [
            "Durable work (`add_tasks(app, journal=path)`, `task(durable=True)`) is written to an "
            "SQLite file (WAL) before it runs: one writer thread per journal takes everything "
            "queued, writes it in one transaction (a grouped commit), and tells the event loop. "
            "Immediate and after-route durable work of a request is committed before the "
            "response starts (the response waits for it); after-response work right after the "
            "last body message. A task's row is written twice, in one statement per grouped "
            "commit each time: inserted (its first attempt counted with it), and with its final "
            "state. The work here is `async def noop(i: int)`, a module-level "
            "function that does nothing with its argument. The files live on the repository's "
            f"disk ({self.data.get('filesystem', 'unknown')}, not a tmpfs), so "
            '`synchronous="full"` pays for real syncs. Target: a durable task '
            f"costs at most {DURABLE_TARGET:.0f} µs more than the same non-durable task under "
            "load, and non-durable work costs the same whether the app has a journal or not.",
            "",
        ]
        lines += self.summary()
        lines += self.load_section()
        lines += self.batch_section()
        lines += self.instructions_section()
        lines += self.taskflow_section()
        lines += self.run_section()
        return lines

    # -- the targets -------------------------------------------------------------------------

    def journal_ratio(self, mode: str) -> float:
        counts = self.data["instructions"]["per_request"]
        return _median(counts[f"journal-{mode}"]) / _median(counts[f"library-{mode}"])

    def summary(self) -> list[str]:
        rows: list[list[str]] = []
        for mode in DURABLE_MODES:
            for sync in ("full", "normal"):
                extra = self.extra(f"current:durable-{mode}-{sync}")
                assert extra is not None
                rows.append(
                    [
                        f"{durable_label(f'durable-{mode}-{sync}')}: µs per request above "
                        f"`{_scheduler(mode)}.schedule(noop, i)`, under load",
                        f"≤ {DURABLE_TARGET:.0f} µs",
                        f"{extra:.0f} µs",
                        "met" if extra <= DURABLE_TARGET else "**missed**",
                    ]
                )
        for mode in DURABLE_MODES:
            ratio = self.journal_ratio(mode)
            rows.append(
                [
                    f"non-durable `{_scheduler(mode)}.schedule(work)` on an app with a journal, "
                    f"{X} without (instructions per request)",
                    f"1.00{X} (within the 1% noise)",
                    f"{ratio:.3f}{X}",
                    "met" if abs(ratio - 1) <= 0.01 else "**missed**",
                ]
            )
        return [
            "### Targets and results",
            "",
            "Under load, the server is the bottleneck (one uvicorn process, its event loop "
            "busy), so the wall time it spends per request is 1 / (requests per second); "
            "a durable task's extra cost is that time minus the same figure for the same "
            "endpoint scheduling the same task without `durable=True` (median requests per "
            "second of each). Wall time swings on this shared machine: differences of a few "
            "tens of µs are within the noise.",
            "",
            *_table(["figure", "target", "measured", "verdict"], rows),
        ]

    # -- under load --------------------------------------------------------------------------

    def load_section(self) -> list[str]:
        load = self.data["load"]
        runs: dict[str, list[dict[str, float]]] = load["runs"]
        rows: list[list[str]] = []
        for label, values in runs.items():
            extra = self.extra(label)
            commits = [run["commits"] for run in values if "commits" in run]
            per_commit = (
                _spread([run["requests"] / run["commits"] for run in values], 1.0, 1)
                if commits and all(commits)
                else TO
            )
            rows.append(
                [
                    self.label(label),
                    _spread([run["rps"] for run in values], 1.0, 0),
                    f"{self.per_request(label):.0f}",
                    TO if extra is None else f"{extra:+.0f}",
                    _spread([run["p50"] for run in values], 1e3, 2),
                    _spread([run["p99"] for run in values], 1e3, 2),
                    per_commit,
                ]
            )
        rounds = len(next(iter(runs.values())))
        return [
            "",
            f"### Requests under load: {load['connections']} concurrent clients",
            "",
            "One uvicorn process per variant (asyncio, h11) on 127.0.0.1, all started before "
            f"the first measurement; `wrk --threads 1 --connections {load['connections']} "
            f"--duration {load['seconds']}s --latency` after a 1 s warm-up; median (min{TO}max) "
            f"over {rounds} interleaved rounds. Each request schedules one task with the "
            'request\'s number. "µs / request" is 1 / (median requests per second); "extra" '
            "subtracts the same figure of the same call without persistence (for "
            "fastapi-taskflow: its in-memory manager). Tasks per commit: wrk's requests "
            "divided by the transactions committed on the process's SQLite connections "
            "meanwhile (counted by a trace callback on each connection, a Python call per "
            "statement that the variants with a file pay; lease renewals included).",
            "",
            *_table(
                [
                    "variant",
                    "requests / s",
                    "µs / request",
                    "extra µs / task",
                    "p50 ms",
                    "p99 ms",
                    "tasks / commit",
                ],
                rows,
            ),
        ]

    # -- batch -------------------------------------------------------------------------------

    def batch_section(self) -> list[str]:
        batch = self.data["batch"]
        tasks: int = batch["tasks"]
        runs: dict[str, list[dict[str, Any]]] = batch["runs"]
        rows: list[list[str]] = []
        for label, values in runs.items():
            key, _, variant = label.partition(":")
            done = [run["done"] for run in values]
            peer = DURABLE_PEERS.get(variant, "arg-immediate")
            peer_runs = runs.get(f"{key}:{peer}")
            ratio = TO
            if peer_runs is not None:
                ratio = _ratio(_median(done), _median([run["done"] for run in peer_runs]))
            settled = [run["settled"] for run in values if run["settled"] is not None]
            commits = [run["statements"]["commits"] for run in values]
            rows.append(
                [
                    self.label(label),
                    _spread([run["response"] for run in values], 1.0, 2),
                    _spread(done, 1e6 / tasks, 1),
                    ratio,
                    _spread(settled, 1e6 / tasks, 1) if settled else TO,
                    _spread(commits, 1.0, 0) if any(commits) else TO,
                ]
            )
        return [
            "",
            f"### {tasks:,} tasks from one request",
            "",
            f"A fresh process per run, the app served over raw ASGI (no sockets); after a "
            f"warm-up, one request schedules {tasks:,} immediate tasks in a loop. Times from the "
            'start of the request. "All ran": the last task\'s function returned. "All '
            "final in the file\": a connection of the benchmark's own sees every one of those "
            "rows finished (polled every 5 ms). Durable immediate work of a request is "
            "committed before its response starts, so the response waits for the grouped "
            f"commits of all {tasks:,}. Ratios use the same call without persistence. Median "
            f"(min{TO}max) over {len(next(iter(runs.values())))} interleaved rounds.",
            "",
            *_table(
                [
                    "variant",
                    "response sent after s",
                    "all ran, µs / task",
                    f"{X} without persistence",
                    "all final in the file, µs / task",
                    "commits",
                ],
                rows,
            ),
        ]

    # -- instructions ------------------------------------------------------------------------

    def instructions_section(self) -> list[str]:
        data = self.data["instructions"]
        counts: dict[str, list[float]] = data["per_request"]
        background = _median(counts["background"])
        rows: list[list[str]] = []
        for mode in DURABLE_MODES:
            for name in (f"library-{mode}", f"journal-{mode}"):
                rows.append(
                    [
                        f"`{_scheduler(mode)}.schedule(work)`"
                        + (", app with a journal" if name.startswith("journal-") else ""),
                        _spread(counts[name], 1e-3),
                        _ratio(_median(counts[name]), background),
                        f"{self.journal_ratio(mode):.3f}{X}" if name.startswith("journal-") else TO,
                    ]
                )
        base = data["baseline"]
        return [
            "",
            "### Non-durable work beside a journal",
            "",
            "The instruction counts of (a), `valgrind --tool=cachegrind --cache-sim=no`, per "
            f"request = (count at {data['requests']:,} requests {MINUS} count at 0) / "
            f"{data['requests']:,}, for the same non-durable endpoints on an app with "
            "`add_tasks(app, journal=path)` and on one without. Every process builds and warms "
            "the same apps (those with a journal open their file and start its writer thread); "
            f"the two baselines differ by {abs(base[0] - base[1]) / data['requests']:.0f} "
            "instructions per request.",
            "",
            *_table(
                [
                    "variant",
                    "thousand instructions / request",
                    f"{X} `BackgroundTasks`, 1 task",
                    f"{X} without a journal",
                ],
                rows,
            ),
        ]

    # -- fastapi-taskflow ----------------------------------------------------------------------

    def taskflow_section(self) -> list[str]:
        taskflow = self.data.get("taskflow", {})
        version = taskflow.get("version", "")
        if taskflow.get("note"):
            return [
                "",
                f"**fastapi-taskflow {version} was not measured in this run: {taskflow['note']}.**",
            ]
        return [
            "",
            f"### What fastapi-taskflow {version}'s SQLite persistence does",
            "",
            "Its rows above use `TaskManager(snapshot_db=path, requeue_pending=True)` with the "
            "work registered by `@task_manager.task(persist=True)`, everything it offers to get "
            "unfinished work back, and `install(app)` as in its quick start. It does not do "
            "the same thing as the journal, so the figures compare costs, not guarantees. "
            "Nothing is written when a task is scheduled, and the response never waits for a "
            "write. A task that succeeded is saved right after it (`flush_one`: one "
            "transaction per task, from a pool of 4 threads with a connection each, at "
            "SQLite's default `synchronous`); a periodic flush (every 60 s) saves the other "
            "finished ones. Unfinished tasks are written only at a clean shutdown (pending "
            "ones for requeue; running ones as interrupted unless `requeue_on_interrupt=True`) "
            "and run again at the next startup. A process killed (SIGKILL, OOM, power loss) "
            "loses all its unfinished work, and a task acknowledged to a client is on disk only "
            "once it finished. Its counterpart of `tasks.schedule` is "
            "`add_task(..., eager=True)` (`asyncio.create_task` at once); plain `add_task` runs "
            "after the response, as `tasks.after_response` does. Its extra cost per task is "
            "measured against its own in-memory manager.",
        ]

    def run_section(self) -> list[str]:
        seconds = self.data.get("seconds", 0.0)
        machine = self.data.get("machine")
        if self.report is not None or machine is None:
            return ["", f"This section took {seconds / 60:.1f} minutes of the run above."]
        envs = ", ".join(
            f"{key}: Python {env['python']}, "
            + ", ".join(f"{name} {version}" for name, version in env["packages"].items())
            for key, env in machine["environments"].items()
        )
        return [
            "",
            "Run alone (`scripts/bench --only durable`), not with the sections above: "
            f"commit {self.data['commit']}, {self.data['date']}, {seconds / 60:.1f} minutes; "
            f"{machine['cpu']}, {machine['cores']} cores; 1-minute load average "
            f"{machine['load_before']:.2f} before it. Environments: {envs}.",
        ]
