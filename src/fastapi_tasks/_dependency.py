"""The per-request scheduler behind ``tasks: Tasks``, and how far its request got.

A request moves through one stage value: open (the endpoint runs), started (the
response began: after-route work was handed over just before it), done (the last
body message was sent: after-response work is handed over) or broken (the response
could not be completed). A failure of the endpoint or of a dependency's teardown,
learned from FastAPI's exit stacks, marks the request failed while it is still open:
its after-route and after-response work is discarded then, except what was scheduled
with ``run_on_failure=True``. Every hand-over and discard happens in ``_advance`` and
``_fail``, on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Send
from starlette.websockets import WebSocketDisconnect

from ._events import logger
from ._fastapi_compat import on_endpoint_exit
from ._manager import Engine, Scheduler, TaskManager
from ._request import RequestInfo
from ._runner import Chain
from ._task import BrokerWork, TaskState, Work
from .errors import FastAPITasksUninitializedAppError

__all__ = ["SCOPE_KEY", "RequestTasks", "Tasks"]

SCOPE_KEY = "fastapi_tasks"

_OPEN, _STARTED, _DONE, _BROKEN = 0, 1, 2, 3

SUCCEEDED = TaskState.SUCCEEDED

REFUSED_BODY = b'{"detail":"Service Unavailable: background work could not be queued"}'
"""The body of the 503 a request gets when work it scheduled could not be queued:
after-route jobs not enqueued to the broker, durable work not recorded in the journal."""


async def _drop(message: Message) -> None:
    """The app's ``send`` once its response was replaced: its messages go nowhere."""


class RequestTasks(Scheduler):
    """What an endpoint gets for ``tasks: Tasks``.

    ``schedule()`` starts work now; ``after_route`` and ``after_response`` are the
    schedulers for the two later moments. All three are fire-and-forget.
    """

    __slots__ = (
        "_after_response",
        "_after_route",
        "_client_left",
        "_failed",
        "_gate",
        "_receive",
        "_scope",
        "_send",
        "_stage",
        "_watching",
        "info",
    )

    def __init__(
        self, engine: Engine, scope: MutableMapping[str, Any], receive: Receive, send: Send
    ) -> None:
        runner = engine.runner
        self._engine = engine
        self._mode = "immediate"
        # On trio the request's work keeps its start order through a chain of its own.
        self._target = Chain() if runner is not None and runner.ordered else None
        self._config = None
        self._scope = scope
        self._receive = receive
        self._send = send
        self._after_route: list[Work] | None = None
        self._after_response: list[Work] | None = None
        self._stage = _OPEN
        self._failed = False
        self._watching = False
        self._client_left = False
        self.info: RequestInfo | None = None  # set while the manager has listeners
        # What the response waits for: after-route jobs to be enqueued, durable work
        # (immediate and after-route) to be recorded in the journal.
        self._gate: list[Work] | None = None

    def __repr__(self) -> str:
        return f"<Tasks of {self._scope.get('type')} {self._scope.get('path')!r}>"

    @property
    def manager(self) -> TaskManager:
        """The app's task manager."""
        return self._engine.manager

    # The schedulers are made on each access rather than kept: a kept one and this
    # object would refer to each other, a cycle per request for the garbage collector.

    @property
    def after_route(self) -> Scheduler:
        """Work handed over after the endpoint returned, just before the response starts."""
        return Scheduler(self._engine, "after_route", self, None)

    @property
    def after_response(self) -> Scheduler:
        """Work handed over after the response's last byte was sent."""
        return Scheduler(self._engine, "after_response", self, None)

    # -- deferred work (on the event loop) --------------------------------------

    def defer(self, work: Work) -> None:
        """Take after-route or after-response work: now, later, or never."""
        engine = self._engine
        if self._failed and not work.config.run_on_failure:
            engine.discard(work, "the endpoint raised")
            return
        stage = self._stage
        if work.mode == "after_route":
            if stage != _OPEN:
                engine.hand_over(work, self._target)
                return
            if self._after_route is None:
                self._after_route = []
            self._after_route.append(work)
        else:
            if stage == _DONE:
                engine.hand_over(work, self._target)
                return
            if stage == _BROKEN:
                self._settle_broken(work)
                return
            if self._after_response is None:
                self._after_response = []
            self._after_response.append(work)
        if stage == _OPEN and not self._watching:
            # Only while the endpoint runs: FastAPI's stacks are closed afterwards,
            # and a hook pushed onto a closed stack would only make a garbage cycle.
            self._watching = on_endpoint_exit(self._scope, self._exited)

    def _exited(self, exc_type: type[BaseException] | None) -> None:
        """Exit hook on FastAPI's function and request exit stacks."""
        if (
            exc_type is not None
            and self._stage == _OPEN
            and not issubclass(exc_type, WebSocketDisconnect)
        ):
            self._fail("the endpoint raised")

    def _fail(self, reason: str) -> None:
        """The endpoint or a dependency's teardown failed: drop what may not run."""
        self._failed = True
        self._after_route = self._keep_on_failure(self._after_route, reason)
        self._after_response = self._keep_on_failure(self._after_response, reason)

    def _keep_on_failure(self, waiting: list[Work] | None, reason: str) -> list[Work] | None:
        if not waiting:
            return waiting
        keep: list[Work] = []
        for work in waiting:
            if work.config.run_on_failure:
                keep.append(work)
            else:
                self._engine.discard(work, reason)
        return keep

    def hold(self, work: Work) -> bool:
        """Durable immediate work: the response, if it has not started, waits for its record."""
        if self._stage != _OPEN or self._scope["type"] != "http":
            return False
        self._wait_for(work)
        return True

    def _wait_for(self, work: Work) -> None:
        if self._gate is None:
            self._gate = []
        self._gate.append(work)

    def _settle_broken(self, work: Work) -> None:
        if work.config.run_on_failure:
            self._engine.hand_over(work, self._target)
        else:
            self._engine.discard(work, "the response could not be completed")

    def _response_starts(self, message: Message) -> None:
        if not self._watching and message.get("status", 200) >= 400:
            # No exit stack to learn failures from (see _fastapi_compat): an error
            # status is the only sign left of a failed endpoint.
            self._fail("the response is an error")
        self._pass_route()

    def _pass_route(self) -> None:
        """The response starts (or the handler ended without one): hand after-route work over."""
        self._stage = _STARTED
        waiting, self._after_route = self._after_route, None
        engine = self._engine
        for work in waiting or ():
            if work.entry is not None and self._scope["type"] == "http":
                engine.record(work, held=True)  # on disk before the response starts
                self._wait_for(work)
            engine.hand_over(work, self._target)
            if isinstance(work, BrokerWork):
                self._wait_for(work)  # enqueued before the response starts

    def _complete(self) -> None:
        self._stage = _DONE
        waiting, self._after_response = self._after_response, None
        for work in waiting or ():
            self._engine.hand_over(work, self._target)

    def _break(self) -> None:
        self._stage = _BROKEN
        waiting, self._after_response = self._after_response, None
        for work in waiting or ():
            self._settle_broken(work)

    # -- the app's receive and send ---------------------------------------------

    async def receive(self) -> Message:
        """The ``receive`` the app below us gets: notes a client that left."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._client_left = True
        return message

    def send(self, message: Message) -> Awaitable[None]:
        """The ``send`` the app below us gets.

        Only the last message of a response, and only while after-response work
        waits, goes through a coroutine of ours (to act once it was sent); every
        other message is passed straight on, noting how far the response got.
        """
        kind = message["type"]
        if kind == "http.response.start":
            info = self.info
            if info is not None:
                info.response_started = time.time()
                info.status = message.get("status")
            if self._after_route is None and self._after_response is None and self._gate is None:
                self._stage = _STARTED  # nothing waits: the common case, inline
            else:
                self._response_starts(message)
                if self._gate is not None:
                    return self._send_gated(message)
        elif (kind == "http.response.body" and not message.get("more_body", False)) or (
            kind == "http.response.pathsend"
        ):
            info = self.info
            if info is not None:
                info.response_ended = time.time()
            if self._after_response:
                return self._send_last(message)
            self._stage = _DONE
        return self._send(message)

    async def _send_gated(self, message: Message) -> None:
        """Start the response once the work it waits for is queued, else answer 503.

        A client must never see success for work that was not queued: if an
        after-route job could not be enqueued (after its retries), or durable work
        could not be recorded in the journal, the response is replaced by a 503 and
        the app's own messages for it are dropped. The endpoint has run.
        """
        gate: list[Work] = self._gate  # type: ignore[assignment]
        self._gate = None
        engine = self._engine
        refused: list[str] = []
        for work in gate:
            if isinstance(work, BrokerWork):
                await work.wait()
                if work.state is not SUCCEEDED:
                    refused.append(
                        f"after-route job {work.name} (id {work.id}, {work.state.value}) "
                        f"could not be enqueued to {work.broker.name}"
                    )
            elif not await engine.is_recorded(work):
                refused.append(
                    f"durable task {work.name} (id {work.id}) could not be recorded in the "
                    f"journal {engine.journal_name}"
                )
        if not refused:
            await self._send(message)
            return
        logger.error(
            "%s %s: answered 503 instead of the endpoint's response: %s",
            self._scope.get("method"),
            self._scope.get("path"),
            "; ".join(refused),
        )
        self._fail("work it scheduled could not be queued")
        send, self._send = self._send, _drop
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(REFUSED_BODY)).encode()),
        ]
        try:
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": REFUSED_BODY})
        except BaseException:
            self._break()
            raise
        self._complete()

    async def _send_last(self, message: Message) -> None:
        self._client_left = False
        try:
            await self._send(message)
        except self._engine.cancelled_exc:
            # A cancelled final send was not delivered (SPEC 2.7), unless the server
            # reported the client gone while the send ran: hypercorn does so only
            # after it wrote the last bytes, and Starlette then cancels the send.
            if self._client_left:
                self._complete()
            else:
                self._break()
            raise
        except BaseException:
            self._break()
            raise
        self._complete()

    def end(self, failed: bool) -> None:
        """The app returned (or raised): settle whatever still waits."""
        stage = self._stage
        if stage == _DONE:
            return
        if stage == _OPEN:
            if failed:
                self._fail("the request failed")
            self._pass_route()
        if self._scope["type"] == "websocket" and not failed:
            self._complete()  # the handler returned and the socket is closed
        elif self._stage != _BROKEN:
            self._break()


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
