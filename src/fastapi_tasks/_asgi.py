"""The outermost ASGI layer: the app's lifespan, and each request's scheduler and ``send``.

``add_tasks()`` puts it outside every middleware, ServerErrorMiddleware included, so
it sees the ASGI lifespan messages before anything else does and the bytes that
really leave the app. The manager starts before the app's own startup (so startup
code can schedule) and drains as soon as the server asks for shutdown, before the
app's own shutdown and the shutdown of every router, whenever it was included.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from ._dependency import SCOPE_KEY, RequestTasks
from ._manager import Engine, current_scope
from ._request import RequestInfo, current_request

__all__ = ["TasksMiddleware"]


class TasksMiddleware:
    """Installed by ``add_tasks()``; one per app.

    A request that already carries a scheduler (an app mounted under another app
    that called ``add_tasks``) keeps it: mounted apps share the outer app's manager.
    """

    __slots__ = ("_refresh_telemetry", "app", "engine")

    def __init__(self, app: ASGIApp, engine: Engine, refresh_telemetry: Callable[[], Any]) -> None:
        self.app = app
        self.engine = engine
        self._refresh_telemetry = refresh_telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        engine = self.engine
        tasks = RequestTasks(engine, scope, receive, send)
        scope[SCOPE_KEY] = tasks
        # Always: get_task_manager() must tell the apps apart however many run.
        token = current_scope.set(tasks)
        request_token = None
        if engine.listeners is not None:
            # Listeners learn which request scheduled each task and when its response
            # started and ended (the monitor's timeline); nobody else pays for it.
            info = tasks.info = RequestInfo(scope)
            request_token = current_request.set(info)
        try:
            if kind == "http":
                await self.app(scope, tasks.receive, tasks.send)
            else:
                await self.app(scope, receive, send)
        except WebSocketDisconnect:
            tasks.end(failed=False)  # the client left: the socket is closed, nothing failed
            raise
        except BaseException:
            tasks.end(failed=True)
            raise
        else:
            tasks.end(failed=False)
        finally:
            if request_token is not None:
                current_request.reset(request_token)
            current_scope.reset(token)
            # The scope and the scheduler refer to each other; breaking the cycle lets
            # reference counting free both now instead of leaving them to the cyclic
            # garbage collector (which, run per request, costs more than all the rest).
            scope.pop(SCOPE_KEY, None)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine

        async def receive_and_drain() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                # Our work drains while the app's and its routers' resources still exist.
                await engine.aclose()
            return message

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                # The app's own startup may have just set the global tracer or meter provider.
                self._refresh_telemetry()
                # Unfinished durable work from the journal runs once the app is ready.
                engine.resume()
            await send(message)

        self._refresh_telemetry()
        if engine.broker is None and engine.journal is None:
            async with engine.lifespan():
                await self.app(scope, receive_and_drain, send_and_watch)
            return
        # With a broker or a journal, starting can fail (Redis unreachable, trio, a
        # damaged journal file): answer the server's startup message with the reason,
        # as Starlette does for its own.
        startup = await receive()
        replayed = False

        async def replay_startup() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return startup
            return await receive_and_drain()

        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(engine.lifespan())
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                raise
            await self.app(scope, replay_startup, send_and_watch)
