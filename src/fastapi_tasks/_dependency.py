"""The per-request scheduler behind ``tasks: Tasks`` and its two batches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.types import Message, Send
from starlette.websockets import WebSocketDisconnect

from ._config import TaskConfig
from ._fastapi_compat import on_endpoint_exit
from ._manager import Scheduler, TaskManager
from ._task import Task, TaskMode, TaskState
from .errors import FastAPITasksUninitializedAppError

__all__ = ["SCOPE_KEY", "Batch", "RequestTasks", "Tasks"]

SCOPE_KEY = "fastapi_tasks"

# How far the response got, as far as the send hook saw it.
_UNSEEN, _STARTED, _COMPLETE, _BROKEN = 0, 1, 2, 3


class Batch(Scheduler):
    """Work that starts at one later moment: ``tasks.after_route`` or ``tasks.after_response``."""

    __slots__ = ("_mode", "_request")

    def __init__(self, request: RequestTasks, mode: TaskMode) -> None:
        self._request = request
        self._mode: TaskMode = mode

    def __repr__(self) -> str:
        return f"<Batch {self._mode}>"

    def _default_config(self) -> TaskConfig:
        return self._request._manager._config

    def _accept(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        config: TaskConfig,
    ) -> Task[Any]:
        task = self._request._manager._new_task(func, args, kwargs, is_async, config, self._mode)
        self._request._defer(task)
        return task


class RequestTasks(Scheduler):
    """What an endpoint gets for ``tasks: Tasks``.

    ``schedule()`` starts work now; ``after_route`` and ``after_response`` are the
    batches for the two later moments. All three are fire-and-forget.
    """

    __slots__ = (
        "_after_response",
        "_after_route",
        "_failed",
        "_manager",
        "_response_batch",
        "_response_passed",
        "_route_batch",
        "_route_passed",
        "_scope",
        "_send",
        "_stage",
        "_watching",
    )

    def __init__(self, manager: TaskManager, scope: MutableMapping[str, Any], send: Send) -> None:
        self._manager = manager
        self._scope = scope
        self._send = send
        self._after_route: list[Task[Any]] | None = None
        self._after_response: list[Task[Any]] | None = None
        self._route_passed = False
        self._response_passed = False
        self._route_batch: Batch | None = None
        self._response_batch: Batch | None = None
        self._failed = False
        self._watching = False
        self._stage = _UNSEEN

    def __repr__(self) -> str:
        return f"<Tasks of {self._scope.get('type')} {self._scope.get('path')!r}>"

    @property
    def manager(self) -> TaskManager:
        """The app's task manager."""
        return self._manager

    @property
    def after_route(self) -> Batch:
        """Work handed over after the endpoint returned, before the response starts."""
        batch = self._route_batch
        if batch is None:
            batch = self._route_batch = Batch(self, "after_route")
        return batch

    @property
    def after_response(self) -> Batch:
        """Work handed over after the response's last byte was sent."""
        batch = self._response_batch
        if batch is None:
            batch = self._response_batch = Batch(self, "after_response")
        return batch

    def _default_config(self) -> TaskConfig:
        return self._manager._config

    def _accept(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        config: TaskConfig,
    ) -> Task[Any]:
        return self._manager._accept(func, args, kwargs, is_async, config)

    # -- deferred work ----------------------------------------------------------

    def _defer(self, task: Task[Any]) -> None:
        if task.mode == "after_route":
            if self._route_passed:
                self._manager._release_threadsafe(task)
                return
            if self._after_route is None:
                self._after_route = []
            self._after_route.append(task)
        else:
            if self._response_passed:
                self._manager._release_threadsafe(task)
                return
            if self._after_response is None:
                self._after_response = []
            self._after_response.append(task)
        if not self._watching:
            self._watching = True
            on_endpoint_exit(self._scope, self._endpoint_exited)

    def _release_route(self, failed: bool) -> None:
        waiting = self._after_route
        self._after_route = None
        self._route_passed = True
        if waiting:
            self._manager._release_all(waiting, failed, "the endpoint raised")

    def _release_response(self, failed: bool, reason: str) -> None:
        waiting = self._after_response
        self._after_response = None
        self._response_passed = True
        if waiting:
            self._manager._release_all(waiting, failed, reason)

    async def _endpoint_exited(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failed = exc_type is not None and not issubclass(exc_type, WebSocketDisconnect)
        self._failed = failed
        self._release_route(failed)
        waiting = self._after_response
        if failed and waiting:
            keep: list[Task[Any]] = []
            for task in waiting:
                if task.config.run_on_failure:
                    keep.append(task)
                elif task.state is TaskState.PENDING:
                    self._manager._discard(task, "the endpoint raised")
            self._after_response = keep

    # -- the send hook ----------------------------------------------------------

    def send(self, message: Message) -> Awaitable[None]:
        """The ``send`` the app below us gets; a pass-through while no work waits."""
        if not self._after_route and not self._after_response:
            # Still note how far the response got: work scheduled later (from a
            # streaming body, say) must know whether the response was completed.
            kind = message["type"]
            if kind == "http.response.start":
                self._stage = _STARTED
            elif (kind == "http.response.body" and not message.get("more_body", False)) or (
                kind == "http.response.pathsend"
            ):
                self._stage = _COMPLETE
            return self._send(message)
        return self._send_watched(message)

    async def _send_watched(self, message: Message) -> None:
        if self._after_route:
            self._release_route(self._failed)
        kind = message["type"]
        if (kind == "http.response.body" and not message.get("more_body", False)) or (
            kind == "http.response.pathsend"
        ):
            try:
                await self._send(message)
            except self._manager._cancelled_exc:
                # The app's own cancel scope stopped the send, not the transport: a
                # server only reports the disconnect Starlette listens for once it is
                # done writing (hypercorn does so inside this very send). A transport
                # that failed to write raises an error instead (below).
                self._stage = _COMPLETE
                self._release_response(False, "")
                raise
            except BaseException:
                self._stage = _BROKEN
                raise
            self._stage = _COMPLETE
            self._release_response(False, "")
            return
        self._stage = _STARTED
        await self._send(message)

    def end(self, failed: bool) -> None:
        """The app returned (or raised): settle whatever still waits."""
        self._release_route(failed or self._failed)
        incomplete = failed or self._stage in (_STARTED, _BROKEN)
        reason = "the request failed" if failed else "the response could not be completed"
        self._release_response(incomplete, reason)


async def _request_tasks(connection: HTTPConnection) -> RequestTasks:
    tasks: RequestTasks | None = connection.scope.get(SCOPE_KEY)
    if tasks is None:
        raise FastAPITasksUninitializedAppError(
            "this app has no task manager: call add_tasks(app) on it "
            "(or on the app it is mounted under) before using Tasks"
        )
    return tasks


Tasks = Annotated[RequestTasks, Depends(_request_tasks)]
"""Endpoint parameter type that gives the request's scheduler: ``tasks: Tasks``."""
