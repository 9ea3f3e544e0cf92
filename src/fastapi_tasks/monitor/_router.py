"""The monitor's routes: the page, its assets, the JSON API and the live stream."""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from .._lifespan import get_task_manager
from .._manager import TaskManager
from ._state import MonitorState

__all__ = ["is_loopback", "monitor_router", "same_origin"]

logger = logging.getLogger("fastapi_tasks")

STREAM_INTERVAL = 0.25
"""Seconds between two messages of one live stream at least: 4 a second at most."""
STREAM_IDLE = 5.0
"""Seconds after which a stream sends a message even when nothing changed (ages move)."""
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
ASSETS = {
    "monitor.css": "text/css; charset=utf-8",
    "monitor.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE_HEADERS = {
    # Everything the page needs comes from here; nothing may frame it.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def is_loopback(client_host: str | None, header_names: Sequence[str]) -> bool:
    """Whether a request comes from this machine, and not through a proxy.

    ``header_names`` are the request's header names, lower case. A request that
    carries ``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP`` is never loopback: a
    reverse proxy on the same host would make every visitor look local.
    """
    if client_host is None or any(name in FORWARDING_HEADERS for name in header_names):
        return False
    try:
        address = ipaddress.ip_address(client_host.split("%", 1)[0])
    except ValueError:  # a name, or a Unix socket path: not an address we can judge
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def same_origin(request: Request) -> bool:
    """Whether ``Origin`` (else ``Referer``) names the origin the request was sent to."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return False
    parts = urlsplit(claimed)
    host = request.headers.get("host")
    if not parts.scheme or not parts.netloc or host is None:
        return False
    return (parts.scheme.lower(), parts.netloc.lower()) == (request.url.scheme, host.lower())


async def _loopback_only(request: Request) -> None:
    client = request.client
    header_names = [name.decode("latin-1").lower() for name, _ in request.scope["headers"]]
    if not is_loopback(None if client is None else client.host, header_names):
        raise HTTPException(
            403,
            "the task monitor answers only clients on this machine: add a guard with "
            "monitor_router(dependencies=[...]) to open it to others",
        )


def _read_asset(name: str) -> bytes:
    return resources.files("fastapi_tasks.monitor").joinpath("static").joinpath(name).read_bytes()


def monitor_router(
    dependencies: Sequence[Any] | None = None,
    show_arguments: bool = False,
    history: int = 1000,
) -> APIRouter:
    """A router that serves a live page of the app's background work, and its JSON API.

    Include it with a prefix: ``app.include_router(monitor_router(), prefix="/tasks")``,
    then open ``/tasks/``. It stays out of the OpenAPI schema.

    Args:
        dependencies: FastAPI dependencies that guard every route (``[Depends(check)]``):
            they decide who may see the page. Without them the monitor answers only
            clients on loopback addresses (403 to others, and to any request carrying
            ``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP``), and a WARNING at
            startup says how to add a guard.
        show_arguments: Show each task's arguments in its detail and the JSON API.
            Off by default: arguments often carry personal data and secrets.
        history: How many finished tasks are kept (failures, details, the timeline).

    Returns:
        The router. Actions (cancel) are POSTs, refused with 403 unless their
        ``Origin`` (else ``Referer``) header names the monitor's own origin.
    """
    if not isinstance(cast("object", history), int) or isinstance(history, bool) or history < 1:
        raise ValueError(f"history must be a positive int, got {history!r}")
    guard: list[Any] | None = None if dependencies is None else list(dependencies)
    guarded = guard is not None
    if guard is not None and any(not isinstance(item, DependsParam) for item in guard):
        raise TypeError("dependencies must be a list of Depends(...) objects")
    states: weakref.WeakKeyDictionary[TaskManager, MonitorState] = weakref.WeakKeyDictionary()
    assets: dict[str, bytes] = {}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncGenerator[None, None]:
        manager = get_task_manager(app)
        state = MonitorState(manager, history, show_arguments)
        states[manager] = state
        journal = manager.journal
        if journal is not None:
            # sqlite3 and the journal's reader: only for apps that have a journal.
            from ._journal import JournalView

            state.journal = JournalView(journal.path, history, show_arguments)
        manager.add_listener(state.listen, kinds=("finished",))
        if not guarded:
            logger.warning(
                "the task monitor has no guard: it answers only clients on loopback "
                "addresses. To open it to others, protect it with "
                "monitor_router(dependencies=[Depends(...)])"
            )
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(state.run_clock)
                yield
                group.cancel_scope.cancel()
        finally:
            manager.remove_listener(state.listen)
            states.pop(manager, None)

    router = APIRouter(
        dependencies=[Depends(_loopback_only)] if guard is None else guard,
        include_in_schema=False,
        lifespan=lifespan,
    )

    def state_of(request: Request) -> MonitorState:
        state = states.get(get_task_manager(request.app))
        if state is None:
            raise HTTPException(503, "the task monitor starts with the app's lifespan")
        return state

    def asset(name: str) -> bytes:
        data = assets.get(name)
        if data is None:
            data = assets[name] = _read_asset(name)
        return data

    @router.get("/")
    async def page() -> Response:
        return Response(asset("index.html"), media_type="text/html", headers=PAGE_HEADERS)

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404)
        return Response(asset(name), media_type=media_type, headers=PAGE_HEADERS)

    @router.get("/api/snapshot")
    async def snapshot(request: Request) -> JSONResponse:
        state = state_of(request)
        data = state.snapshot()
        view = state.journal
        if view is not None:
            data["journal"] = await view.section()
        return JSONResponse(data, headers=API_HEADERS)

    @router.get("/api/journal")
    async def journal_section(request: Request) -> JSONResponse:
        view = state_of(request).journal
        if view is None:
            raise HTTPException(404, "this app has no journal: add_tasks(app, journal=...)")
        section = await view.section()
        return JSONResponse({"now": time.time(), "journal": section}, headers=API_HEADERS)

    @router.get("/api/stream", response_class=EventSourceResponse)
    async def stream(request: Request) -> AsyncIterator[ServerSentEvent]:
        state = state_of(request)
        seen: tuple[int, int, int] | None = None
        journal_seen = 0  # a view's first read makes its version 1
        view = state.journal
        quiet = 0.0
        while True:
            state.drain()
            stats = state.manager.stats
            moved = (state.version, stats.scheduled, stats.running)
            if moved != seen or quiet >= STREAM_IDLE:
                seen = moved
                quiet = 0.0
                yield ServerSentEvent(event="snapshot", raw_data=_dumps(state.snapshot()))
            if view is not None:
                # Served from memory but once every INTERVAL: sent only when it changed.
                section = await view.section()
                if view.version != journal_seen:
                    journal_seen = view.version
                    data = {"now": time.time(), "journal": section}
                    yield ServerSentEvent(event="journal", raw_data=_dumps(data))
            await anyio.sleep(STREAM_INTERVAL)
            quiet += STREAM_INTERVAL

    @router.get("/api/{section}")
    async def section(request: Request, section: str) -> JSONResponse:
        data = state_of(request).snapshot()
        if section not in data or section == "now":
            raise HTTPException(404)
        return JSONResponse({"now": data["now"], section: data[section]}, headers=API_HEADERS)

    @router.get("/api/tasks/{task_id}")
    async def detail(request: Request, task_id: int) -> JSONResponse:
        state = state_of(request)
        record = state.find(task_id)
        if record is None:
            raise HTTPException(404, f"no task {task_id} in the monitor's history")
        return JSONResponse(record.detail(time.time(), state.show_arguments), headers=API_HEADERS)

    @router.post("/api/tasks/{task_id}/cancel")
    async def cancel(request: Request, task_id: int) -> JSONResponse:
        if not same_origin(request):
            raise HTTPException(403, "actions need an Origin or Referer of the monitor's own")
        state = state_of(request)
        record = state.find(task_id)
        if record is None:
            raise HTTPException(404, f"no task {task_id} in the monitor's history")
        task = record.task
        cancelled = task.cancel() if task is not None else False
        return JSONResponse({"id": task_id, "cancelled": cancelled}, headers=API_HEADERS)

    return router


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)
