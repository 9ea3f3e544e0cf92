"""Every Python example in README.md and docs/*.md runs here; the API reference matches ``__all__``.

How an example runs:

- A fenced ``python`` block is one example. It runs as a fresh module of its own.
- A block preceded by ``<!-- continues -->`` is appended to the example before it on the
  same page: the two (or more) blocks run as one program, the way a reader follows them.
- A block preceded by ``<!-- not-run: reason -->`` is not run; the reason is required and
  the page should say the same thing in words.
- A block that defines ``test_...`` functions is a test module: it runs under pytest
  (in process, with warnings as errors, async tests on asyncio and trio).
- Any other block is executed. For every app in it that called ``add_tasks``, the app's
  lifespan runs under ``TestClient`` (on asyncio and on trio), the code of an optional
  ``<!-- run: ... -->`` comment right after the block drives it (with ``client``, ``app``
  and ``manager`` in scope, next to the example's own names), then ``join_blocking()``
  waits for every task and the lifespan shuts down.
- An example that defines ``async def main()`` drives itself: ``main`` runs on asyncio and
  on trio instead, and must run any lifespan it needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
import types
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from fastapi.testclient import TestClient
from starlette import testclient as starlette_testclient
from starlette.applications import Starlette

import fastapi_tasks
import fastapi_tasks.journal
import fastapi_tasks.monitor
import fastapi_tasks.testing
from fastapi_tasks import TaskManager, get_task_manager
from fastapi_tasks.errors import FastAPITasksUninitializedAppError

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)")
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")
_CONTINUES = re.compile(r"^<!--\s*continues\s*-->$")
_RUN_OPEN = "<!-- run:"
_PYTHON = ("python", "py")
_JOIN_TIMEOUT = 10

# Runs in the pytest process that executes a test-module example.
_INNER_CONFTEST = """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""


@dataclasses.dataclass
class Example:
    page: Path
    line: int
    code: str
    skip_reason: str | None = None
    driver: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_test_module(self) -> bool:
        return re.search(r"^(async )?def test_", self.code, re.MULTILINE) is not None


def _marker_before(lines: list[str], index: int) -> str:
    """The nearest non-blank line above ``lines[index]``, stripped."""
    for line in reversed(lines[:index]):
        if line.strip():
            return line.strip()
    return ""


def _driver_after(lines: list[str], index: int) -> str | None:
    """The code of a ``<!-- run: ... -->`` comment starting right after ``lines[index]``."""
    at = index + 1
    while at < len(lines) and not lines[at].strip():
        at += 1
    if at == len(lines) or not lines[at].strip().startswith(_RUN_OPEN):
        return None
    body: list[str] = []
    first = lines[at].strip()[len(_RUN_OPEN) :]
    if first.strip():
        body.append(first)
    for line in lines[at + 1 :]:
        if line.strip() == "-->":
            return textwrap.dedent("\n".join(body))
        body.append(line)
    raise AssertionError(f"unclosed <!-- run: comment at line {at + 1}")


def parse_examples(page: Path) -> list[Example]:
    """Every Python block of ``page``, with continuation blocks folded into the one before."""
    lines = page.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        opening, fence, info = index, match["fence"], match["info"].lower()
        indent = len(match["indent"])
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index][indent:])
            index += 1
        closing = index
        index += 1
        if info not in _PYTHON:
            continue
        code = "\n".join(body) + "\n"
        marker = _marker_before(lines, opening)
        driver = _driver_after(lines, closing)
        if _CONTINUES.match(marker):
            assert examples, f"{page.name}:{opening + 1}: nothing before to continue"
            previous = examples[-1]
            assert previous.driver is None, f"{previous.id}: a run comment must come last"
            previous.code += code
            previous.driver = driver
            continue
        skipped = _NOT_RUN.match(marker)
        reason = skipped["reason"] if skipped else None
        assert reason != "", f"{page.name}:{opening + 1}: not-run needs a reason"
        examples.append(Example(page, opening + 1, code, reason, driver))
    return examples


def _all_examples() -> Iterator[Any]:
    for page in PAGES:
        for example in parse_examples(page):
            if example.skip_reason is not None:
                yield pytest.param(
                    example,
                    "-",
                    id=example.id,
                    marks=pytest.mark.skip(reason=example.skip_reason),
                )
            elif example.is_test_module:
                yield pytest.param(example, "-", id=example.id)
            else:
                for backend in ("asyncio", "trio"):
                    yield pytest.param(example, backend, id=f"{example.id}-{backend}")


@contextlib.contextmanager
def _executed(example: Example) -> Generator[dict[str, Any], None, None]:
    """Run the example's code as a module, importable by its name until the block ends."""
    name = "docs_example_" + re.sub(r"\W", "_", example.id)
    module = types.ModuleType(name)
    module.__file__ = str(example.page)
    # pydantic and typing resolve annotations through it, and durable work is found
    # again by "module:qualname" while its app runs.
    sys.modules[name] = module
    try:
        code = compile(example.code, example.id, "exec")
        exec(code, module.__dict__)
        yield module.__dict__
    finally:
        del sys.modules[name]


def _apps_with_tasks(namespace: dict[str, Any]) -> list[tuple[Starlette, TaskManager]]:
    found: list[tuple[Starlette, TaskManager]] = []
    for value in namespace.values():
        if isinstance(value, Starlette) and all(value is not app for app, _ in found):
            try:
                found.append((value, get_task_manager(value)))
            except FastAPITasksUninitializedAppError:
                continue
    return found


def _serve(
    app: Starlette,
    manager: TaskManager,
    backend: Literal["asyncio", "trio"],
    namespace: dict[str, Any],
    driver: str | None,
    label: str,
) -> None:
    """Run the app's lifespan, drive it, wait for every task, then shut it down."""
    client = TestClient(app, backend=backend)
    with client:  # pyright cannot type what TestClient.__enter__ returns
        if driver is not None:
            # The example's own module namespace, live: its globals change as tasks run.
            namespace.update(client=client, manager=manager)
            exec(compile(driver, f"{label} (run comment)", "exec"), namespace)
        manager.join_blocking(_JOIN_TIMEOUT)
        assert manager.tasks == []
    assert not manager.running


@pytest.mark.parametrize(("example", "backend"), list(_all_examples()))
def test_example(
    example: Example,
    backend: str,
    pytester: pytest.Pytester,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if example.is_test_module:
        pytester.makeconftest(_INNER_CONFTEST)
        pytester.makepyfile(test_example=example.code)
        result = pytester.runpytest_inprocess(
            "-p", "anyio", "-p", "no:cacheprovider", "-W", "error", "--strict-markers", "-q"
        )
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) > 0, result.stdout.str()
        assert result.ret == 0, result.stdout.str()
        return

    # Files an example writes (a journal: "tasks.db") land in a directory of its own.
    monkeypatch.chdir(tmp_path)
    with _executed(example) as namespace:
        main = namespace.get("main")
        if inspect.iscoroutinefunction(main):
            assert example.driver is None, (
                f"{example.id}: main() and a run comment exclude each other"
            )
            anyio.run(main, backend=backend)
            return
        if example.driver is not None:
            assert "app" in namespace, f"{example.id}: a run comment needs an app named 'app'"
        for app, manager in _apps_with_tasks(namespace):
            driver = example.driver if app is namespace.get("app") else None
            _serve(
                app,
                manager,
                "trio" if backend == "trio" else "asyncio",
                namespace,
                driver,
                example.id,
            )


# -- the collector itself -------------------------------------------------------------


def test_every_python_block_is_collected() -> None:
    """The parser finds as many examples as there are Python fences, so none hides."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        fences = len(re.findall(r"^\s*```(?:python|py)\s*$", text, re.MULTILINE))
        continued = len(re.findall(r"^\s*<!--\s*continues\s*-->\s*$", text, re.MULTILINE))
        assert len(parse_examples(page)) == fences - continued, page.name


def test_the_pages_have_examples() -> None:
    examples = [example for page in PAGES for example in parse_examples(page)]
    assert len(examples) >= 20
    assert any(example.page.name == "README.md" for example in examples)
    assert all(
        example.skip_reason is None for example in examples if example.page.name == "README.md"
    )


def test_parser_reads_markers_drivers_and_indented_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent(
            """\
            <!-- not-run: needs a database -->
            ```python
            connect()
            ```

            !!! note
                ```python
                first = 1
                ```

            <!-- continues -->
            ```py
            second = first + 1
            ```
            <!-- run:
            assert second == 2
            -->

            ```console
            $ not python
            ```
            """
        ),
        encoding="utf-8",
    )
    skipped, combined = parse_examples(page)
    assert (skipped.line, skipped.skip_reason) == (2, "needs a database")
    assert combined.line == 7
    assert combined.code == "first = 1\nsecond = first + 1\n"
    assert combined.driver == "assert second == 2"


# -- the API reference ----------------------------------------------------------------


def _reference_targets() -> list[str]:
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    return re.findall(r"^::: (\S+)", text, re.MULTILINE)


def _resolve(target: str) -> object:
    module_name, _, attribute = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return importlib.import_module(target)


def test_api_reference_documents_exactly_the_public_names() -> None:
    documented: set[str] = set()
    for target in _reference_targets():
        _resolve(target)  # every target exists
        parts = target.split(".")
        if target == "fastapi_tasks.errors":
            documented.update(fastapi_tasks.errors.__all__)
        elif parts[:2] == ["fastapi_tasks", "testing"]:
            assert parts[2] in fastapi_tasks.testing.__all__, target  # a public helper module
        elif parts[:2] == ["fastapi_tasks", "monitor"]:
            assert parts[2] in fastapi_tasks.monitor.__all__, target  # the monitor's module
        elif parts[:2] == ["fastapi_tasks", "journal"]:
            assert parts[2] in fastapi_tasks.journal.__all__, target  # the journal's module
        else:
            # Only names a user can import: no private modules, no internal classes.
            assert parts[:-1] == ["fastapi_tasks"], target
            documented.add(parts[1])
    assert documented == set(fastapi_tasks.__all__)
    assert set(fastapi_tasks.errors.__all__) <= set(fastapi_tasks.__all__)


def test_readme_links_to_existing_pages() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)", readme)
    local = [target for target in targets if "://" not in target]
    assert local, "the README links to the documentation"
    for target in local:
        assert (ROOT / target).exists(), target


# -- the testing page's advice ----------------------------------------------------------

# Stands in for a project that has httpx but not httpx2: the two share one API, so httpx2
# plays httpx, and Starlette sees no httpx2. It must run before Starlette's test client is
# imported, hence a conftest.
_HTTPX_ONLY_CONFTEST = """
import sys

import httpx2

sys.modules["httpx"] = httpx2
sys.modules["httpx2"] = None
"""

_HTTPX_ONLY_TESTS = """
import warnings

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient


def test_the_client_works() -> None:
    app = FastAPI()

    @app.get("/")
    def root() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        assert client.get("/").json() == {"ok": True}


def test_other_warnings_still_fail() -> None:
    with pytest.raises(DeprecationWarning):
        warnings.warn("something else", DeprecationWarning)
"""


def test_testing_page_filter_ignores_only_the_httpx_warning(pytester: pytest.Pytester) -> None:
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    [settings] = [
        block
        for block in re.findall(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
        if "filterwarnings" in block
    ]
    pytester.makeconftest(_HTTPX_ONLY_CONFTEST)
    pytester.makepyfile(test_with_httpx=_HTTPX_ONLY_TESTS)

    # Without the page's line, Starlette's warning fails the suite while it collects
    # (Starlette 1.10 and later: earlier releases, installed on Python 3.10, do not warn) ...
    if "Using `httpx` with" in Path(starlette_testclient.__file__).read_text(encoding="utf-8"):
        pytester.makepyprojecttoml('[tool.pytest.ini_options]\nfilterwarnings = ["error"]\n')
        failing = pytester.runpytest_subprocess("-p", "no:cacheprovider")
        assert failing.ret != 0
        failing.stdout.fnmatch_lines(["*Using `httpx` with `starlette.testclient` is deprecated*"])

    # ... with it, the suite passes and every other warning is still an error.
    pytester.makepyprojecttoml(settings)
    passing = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    passing.assert_outcomes(passed=2)
