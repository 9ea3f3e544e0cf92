"""SPEC section 3: options, precedence and merging."""

from __future__ import annotations

import anyio
import pytest
from fastapi import FastAPI

from fastapi_tasks import TaskConfig, Tasks, add_tasks

from .conftest import serving

pytestmark = pytest.mark.anyio


def test_unset_fields_read_as_none_and_merge_never_mutates() -> None:
    base = TaskConfig(name="base", timeout=5.0, retries=2)
    override = TaskConfig(timeout=None, shield=True)
    merged = base.merge(override)
    assert merged == TaskConfig(name="base", timeout=None, retries=2, shield=True)
    assert merged.timeout is None
    assert merged.shielded
    assert base.timeout == 5.0
    assert override.retries is None
    assert base.given == {"name", "timeout", "retries"}
    assert TaskConfig().merge(base) is base
    assert base.merge(TaskConfig()) is base
    assert repr(override) == "TaskConfig(shield=True, timeout=None)"
    assert not TaskConfig().shielded
    assert TaskConfig().plain  # no timeout, retries or limiter: the fast path
    assert not base.plain
    assert TaskConfig(retry_on=ValueError).retry_on is ValueError


async def test_precedence_library_then_app_then_task() -> None:
    app = FastAPI()
    manager = add_tasks(app, config=TaskConfig(name="app-default", shield=True, timeout=3.0))
    seen: dict[str, TaskConfig] = {}

    async def work() -> None:
        pass

    @app.get("/")
    async def endpoint(tasks: Tasks) -> str:
        seen["plain"] = tasks.schedule(work).config
        seen["named"] = tasks.task(name="mine", timeout=None).schedule(work).config
        configured = tasks.after_route.task(shield=False)
        seen["route"] = configured.task(name="deeper").schedule(work).config
        seen["response"] = tasks.after_response.task().schedule(work).config
        assert configured.config.shield is False
        return "ok"

    async with serving(app) as client:
        await client.get("/")
        await manager.join(5)
    assert seen["plain"] == TaskConfig(name="app-default", shield=True, timeout=3.0)
    assert seen["named"] == TaskConfig(name="mine", shield=True, timeout=None)
    assert seen["route"] == TaskConfig(name="deeper", shield=False, timeout=3.0)
    assert seen["response"] == manager.config


async def test_task_name_defaults_to_qualified_name(
    app: FastAPI,
) -> None:
    manager = add_tasks(app)

    async def work() -> None:
        pass

    async with serving(app):
        task = manager.schedule(work)
        named = manager.task(name="custom").schedule(work)
        await manager.join(5)
    assert task.name.endswith("test_task_name_defaults_to_qualified_name.<locals>.work")
    assert named.name == "custom"
    assert anyio  # keeps the import used for the backend marker
