"""Task options: one frozen dataclass, validated when built, merged field by field."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio

__all__ = ["MAX_RETRY_DELAY", "OPTION_NAMES", "ErrorHandler", "TaskConfig"]

MAX_RETRY_DELAY = 3600.0
"""Longest wait between two attempts, in seconds, whatever ``retry_delay`` and
``retry_backoff`` multiply up to (a large backoff would otherwise overflow)."""

ErrorHandler = Callable[[Any, BaseException], "Awaitable[None] | None"]
"""What ``on_error`` holds here; ``TaskErrorHandler`` (with the task's type) is in ``_task``,
which needs this module, not the other way round."""


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def check_number(
    name: str, value: object, *, minimum: float, strict: bool, finite: bool = True
) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number above ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if finite and math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {value!r}")


def check_int(name: str, value: object, *, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a ``bool``) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class TaskConfig:
    """Options for background work.

    Every field is optional. A field that was not given inherits from the
    configuration it is merged over; a field given explicitly overrides it, even
    when given as ``None`` (``task(timeout=None)`` switches an inherited timeout
    off). Fields that were never given read as ``None``.

    Attributes:
        name: Label for logs and stats; defaults to the function's qualified name.
        shield: Protect the work from cancellation at shutdown: it runs to completion.
        on_error: Called once with ``(task, exc)`` after the work finally failed.
        timeout: Seconds per attempt; expiry cancels the attempt and fails it with
            ``TimeoutError``.
        retries: Extra attempts after a failure (``0`` means none).
        retry_delay: Seconds to wait before the first retry.
        retry_backoff: Factor the wait grows by per retry (``>= 1``).
        retry_on: Exception types that are retried; other failures are final at once.
        limiter: An ``anyio.CapacityLimiter`` the work holds while it runs.
        run_on_failure: After-route or after-response work that still runs when
            the endpoint raised or the response could not be completed.
        durable: Record the work in the app's journal (``add_tasks(journal=...)``)
            before it runs, so it runs again after a crash or restart until it
            finished; see the durable work guide.

    Derive configs with [`merge()`][fastapi_tasks.TaskConfig.merge] (or ``task(...)``),
    not ``dataclasses.replace()``: ``replace`` passes every field back in, so all of
    them would count as given and override what they should inherit.
    """

    name: str | None = _UNSET
    shield: bool | None = _UNSET
    on_error: ErrorHandler | None = _UNSET
    timeout: float | None = _UNSET
    retries: int | None = _UNSET
    retry_delay: float | None = _UNSET
    retry_backoff: float | None = _UNSET
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = _UNSET
    limiter: anyio.CapacityLimiter | None = _UNSET
    run_on_failure: bool | None = _UNSET
    durable: bool | None = _UNSET
    # Compared too: TaskConfig(timeout=None) and TaskConfig() merge differently.
    _given: frozenset[str] = dataclasses.field(default=frozenset(), init=False, repr=False)
    plain: bool = dataclasses.field(default=True, init=False, compare=False, repr=False)
    """Whether no ``timeout``, ``retries``, ``limiter`` or ``durable`` applies (the fast path)."""

    def __post_init__(self) -> None:
        given: list[str] = []
        for field in _FIELDS:
            value = getattr(self, field)
            if value is _UNSET:
                object.__setattr__(self, field, None)
            else:
                given.append(field)
                if value is not None:
                    _validate(field, value)
        object.__setattr__(self, "_given", frozenset(given))
        plain = (
            self.timeout is None and not self.retries and self.limiter is None and not self.durable
        )
        object.__setattr__(self, "plain", plain)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in _FIELDS if name in self._given
        )
        return f"TaskConfig({shown})"

    @property
    def shielded(self) -> bool:
        """Whether the work is protected from cancellation at shutdown."""
        return bool(self.shield)

    @property
    def given(self) -> frozenset[str]:
        """Names of the fields that were given explicitly (``None`` included)."""
        return self._given

    def merge(self, other: TaskConfig) -> TaskConfig:
        """Return a new config: ``other``'s given fields over this one's. Neither is changed."""
        if not other._given:
            return self
        if not self._given:
            return other
        values = {name: getattr(self, name) for name in self._given}
        values.update({name: getattr(other, name) for name in other._given})
        return TaskConfig(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(TaskConfig) if f.init)
OPTION_NAMES = frozenset(_FIELDS)
"""The names ``task(...)`` accepts."""


def _validate(field: str, value: object) -> None:
    if field == "name":
        if not isinstance(value, str) or not value:
            raise ValueError(f"name must be a non-empty string, got {value!r}")
    elif field in ("shield", "run_on_failure", "durable"):
        if not isinstance(value, bool):
            raise ValueError(f"{field} must be True, False or None, got {value!r}")
    elif field == "on_error":
        _check_handler(value)
    elif field == "timeout":
        check_number("timeout", value, minimum=0, strict=True)
    elif field == "retries":
        check_int("retries", value, minimum=0)
    elif field == "retry_delay":
        check_number("retry_delay", value, minimum=0, strict=False)
    elif field == "retry_backoff":
        check_number("retry_backoff", value, minimum=1, strict=False)
    elif field == "retry_on":
        types = cast("tuple[object, ...]", value) if isinstance(value, tuple) else (value,)
        if not types or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in types
        ):
            raise ValueError(f"retry_on must be a tuple of exception types, got {value!r}")
    elif not isinstance(value, anyio.CapacityLimiter):  # limiter
        raise ValueError(f"limiter must be an anyio.CapacityLimiter, got {value!r}")


def _check_handler(handler: object) -> None:
    """An ``on_error`` handler must accept ``(task, exc)``: refuse it now, not at a failure."""
    if not callable(handler):
        raise ValueError(f"on_error must be callable as handler(task, exc), got {handler!r}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # no signature to check (some builtins)
        return
    try:
        signature.bind(None, None)
    except TypeError as exc:
        name = getattr(handler, "__qualname__", None) or repr(handler)
        raise ValueError(
            f"on_error handler {name} must accept two arguments, (task, exc): {exc}"
        ) from None
