"""The ASGI middleware that gives each request its scheduler and watches ``send``."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from ._dependency import SCOPE_KEY, RequestTasks
from ._manager import TaskManager, current_manager

__all__ = ["TasksMiddleware"]


class TasksMiddleware:
    """Installed by ``add_tasks()``; one per app.

    A request that already carries a scheduler (an app mounted under another app
    that called ``add_tasks``) keeps it: mounted apps share the outer app's manager.
    """

    __slots__ = ("app", "manager")

    def __init__(self, app: ASGIApp, manager: TaskManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" or SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        tasks = RequestTasks(self.manager, scope, send)
        scope[SCOPE_KEY] = tasks
        token = current_manager.set(self.manager)
        try:
            await self.app(scope, receive, tasks.send if kind == "http" else send)
        except WebSocketDisconnect:
            tasks.end(failed=False)  # the client left: the socket is closed, nothing failed
            raise
        except BaseException:
            tasks.end(failed=True)
            raise
        else:
            tasks.end(failed=False)
        finally:
            current_manager.reset(token)
