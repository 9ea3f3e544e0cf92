"""The public surface: exports, typing marker, error hierarchy."""

from __future__ import annotations

from pathlib import Path

import fastapi_tasks
from fastapi_tasks import errors


def test_all_is_sorted_and_every_name_exists() -> None:
    # tests/test_docs.py checks that the API reference renders exactly these names.
    assert fastapi_tasks.__all__ == sorted(fastapi_tasks.__all__)
    for name in fastapi_tasks.__all__:
        assert name in vars(fastapi_tasks), name


def test_errors_share_one_root_and_are_exported_from_errors() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.FastAPITasksError)
        assert getattr(fastapi_tasks, name) is error
        assert name in (errors.__doc__ or "")


def test_package_is_typed() -> None:
    assert (Path(fastapi_tasks.__file__).parent / "py.typed").is_file()
