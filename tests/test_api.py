"""The public surface: exports, typing marker, error hierarchy."""

from __future__ import annotations

from pathlib import Path

import fastapi_tasks
from fastapi_tasks import errors

REFERENCE = Path(__file__).parent.parent / "docs" / "reference.md"


def documented_names() -> set[str]:
    """Names the API reference page renders from the package root or its errors."""
    names: set[str] = set()
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("::: fastapi_tasks."):
            name = line.removeprefix("::: fastapi_tasks.")
            if name == "errors":
                names.update(errors.__all__)
            elif "." not in name:
                names.add(name)
    return names


def test_all_is_sorted_and_matches_the_documented_api() -> None:
    assert fastapi_tasks.__all__ == sorted(fastapi_tasks.__all__)
    # TaskErrorHandler and the rest are type aliases rendered by name too.
    assert set(fastapi_tasks.__all__) == documented_names()
    for name in fastapi_tasks.__all__:
        assert name in vars(fastapi_tasks)


def test_errors_share_one_root_and_are_exported_from_errors() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.FastAPITasksError)
        assert getattr(fastapi_tasks, name) is error
        assert name in (errors.__doc__ or "")


def test_package_is_typed() -> None:
    assert (Path(fastapi_tasks.__file__).parent / "py.typed").is_file()
