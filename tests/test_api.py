"""The public surface: exports, typing marker, error hierarchy."""

from __future__ import annotations

from pathlib import Path

import fastapi_tasks
from fastapi_tasks import errors

DOCUMENTED = {
    "FastAPITasksAlreadyInstalledError",
    "FastAPITasksClosedError",
    "FastAPITasksError",
    "FastAPITasksNotStartedError",
    "FastAPITasksUninitializedAppError",
    "Task",
    "TaskConfig",
    "TaskErrorHandler",
    "TaskManager",
    "TaskMode",
    "TaskOptions",
    "TaskState",
    "TaskStats",
    "Tasks",
    "add_tasks",
    "get_task_manager",
}


def test_all_is_sorted_and_matches_the_documented_api() -> None:
    assert fastapi_tasks.__all__ == sorted(fastapi_tasks.__all__)
    assert set(fastapi_tasks.__all__) == DOCUMENTED
    for name in fastapi_tasks.__all__:
        assert getattr(fastapi_tasks, name) is not None


def test_errors_share_one_root_and_are_exported_from_errors() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.FastAPITasksError)
        assert getattr(fastapi_tasks, name) is error
        assert name in (errors.__doc__ or "")


def test_package_is_typed() -> None:
    assert (Path(fastapi_tasks.__file__).parent / "py.typed").is_file()
