"""What lifecycle events say about the request that scheduled a task.

Recorded only while the app's manager has event listeners (metrics, the monitor, your
own): without them a request pays for one check, and events carry ``None``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["RequestInfo", "current_request"]


class RequestInfo:
    """The request that scheduled a task: its path and when its response started and ended.

    Events of one request share one object, which the library fills in as the
    response goes out: read its attributes, never set them. Times are seconds since
    the epoch (``time.time()``), like [`TaskEvent.time`][fastapi_tasks.TaskEvent].

    Attributes:
        method: The HTTP method, or ``"WEBSOCKET"``.
        path: The path of the request (without the query string).
        received: When the request reached the app.
        response_started: When ``http.response.start`` went out (after-route work is
            handed over just before it), else ``None``.
        response_ended: When the last body message went out (after-response work is
            handed over right after it), else ``None``.
        status: The response's status code once it started, else ``None``.
    """

    __slots__ = ("method", "path", "received", "response_ended", "response_started", "status")

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.method: str = scope.get("method", "WEBSOCKET")
        self.path: str = scope.get("path", "")
        self.received = time.time()
        self.response_started: float | None = None
        self.response_ended: float | None = None
        self.status: int | None = None

    def __repr__(self) -> str:
        return f"<RequestInfo {self.method} {self.path!r} status={self.status}>"

    def handed_over(self, mode: str, scheduled: float) -> float | None:
        """When work of ``mode`` scheduled at ``scheduled`` in this request was handed over.

        After-route work goes to the runner as the response starts, after-response
        work once it ended (or at once, when scheduled after that moment). ``None``
        when that moment never came (work of a failed request that ran anyway, with
        ``run_on_failure=True``, before its response could start or end).
        """
        if mode == "immediate":
            return scheduled
        moment = self.response_started if mode == "after_route" else self.response_ended
        return None if moment is None else max(moment, scheduled)


current_request: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "fastapi_tasks_request", default=None
)
"""The request being served in this context, while the manager has listeners."""
