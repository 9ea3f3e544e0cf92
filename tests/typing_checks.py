"""Checked by mypy and pyright (scripts/check), never run: the typing promises of SPEC §1.

mypy runs with ``warn_unused_ignores``: if ``schedule()`` stopped rejecting a wrong call,
the ignore below would become unused and the check would fail.
"""

from __future__ import annotations

from typing_extensions import assert_type

from fastapi_tasks import Task, TaskManager, Tasks


async def send_email(to: str, *, retry: bool = False) -> int:
    return len(to)


def resize(photo_id: int) -> str:
    return str(photo_id)


def schedules_with_the_right_types(tasks: Tasks, manager: TaskManager) -> None:
    assert_type(tasks.schedule(send_email, "a@example.com"), Task[int])
    assert_type(tasks.after_route.schedule(resize, 3), Task[str])
    assert_type(
        tasks.after_response.task(retries=2).schedule(send_email, "b", retry=True), Task[int]
    )
    assert_type(manager.schedule(resize, photo_id=4), Task[str])


def rejects_wrong_arguments(tasks: Tasks) -> None:
    tasks.schedule(send_email, 42)  # type: ignore[call-overload]
    tasks.after_response.schedule(resize)  # type: ignore[call-overload]
    tasks.after_route.schedule(send_email, "x", unknown=1)  # type: ignore[call-arg]
