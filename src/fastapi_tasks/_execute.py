"""One coroutine owns a task's life: its attempts, timeout, retries, ``on_error``, its end.

The runner starts ``execute(work, host)`` and nothing else. Whatever the work raises,
a ``BaseException`` included (``SystemExit`` from ``sys.exit()``, ``KeyboardInterrupt``,
a custom one), is that task's failure: logged, handed to ``on_error``, counted, and
never re-raised into the event loop or the server. Only the runner's own cancellation
passes through. The final state is written by ``host.settle()``, once.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import anyio

from ._call import is_async_callable
from ._config import MAX_RETRY_DELAY
from ._events import log_failure, logger, safe_repr
from ._task import PENDING, BrokerWork, Task, TaskState, Work

__all__ = ["Host", "execute", "retry_wait"]

SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED


class Host(Protocol):
    """What the executor needs from the manager that runs the work."""

    cancelled_exc: type[BaseException]
    handlers_cancelled: bool
    tracer: Any

    def span(self, task: Task[Any]) -> AbstractContextManager[None]: ...
    def mark_started(self, work: Work) -> None: ...
    def mark_retrying(self, work: Work, exc: BaseException, wait: float) -> None: ...
    def mark_enqueued(self, work: BrokerWork) -> None: ...
    def retryable(self, work: Work) -> bool: ...
    async def journal_attempt(self, work: Work) -> None: ...
    def settle(self, work: Work, state: TaskState) -> None: ...
    async def call_sync(
        self,
        work: Work,
        func: Callable[[], Any],
        limiter: anyio.CapacityLimiter | None,
        time_limit: float | None,
    ) -> Any: ...


def retry_wait(work: Work) -> float:
    """Seconds before the next retry: delay x backoff^(n-1) with +/-20% jitter, capped."""
    config = work.config
    delay = config.retry_delay or 0.0
    if not delay:
        return 0.0
    try:
        base = delay * (config.retry_backoff or 1.0) ** (work.attempts - 1)
    except OverflowError:
        base = MAX_RETRY_DELAY
    return min(base * random.uniform(0.8, 1.2), MAX_RETRY_DELAY)


async def execute(work: Work, host: Host) -> None:
    """Run the work to its final state; started once, by the runner."""
    if work.state is not PENDING:  # cancelled after the runner got it
        return
    span = None
    if host.tracer is not None:
        span = host.span(work)
        span.__enter__()
    host.mark_started(work)
    state = CANCELLED
    try:
        config = work.config
        if not config.plain:
            work.result = await _run_attempts(work, host)
        elif work.is_async:
            work.result = await work.func(*work.args, **work.kwargs)
        elif isinstance(work, BrokerWork):
            await _enqueue(work, host)
        else:
            call = functools.partial(work.func, *work.args, **work.kwargs)
            work.result = await host.call_sync(work, call, None, None)
        state = SUCCEEDED
    except host.cancelled_exc:
        raise
    except BaseException as exc:
        # The state stays RUNNING until on_error returned: until then the task can
        # still be cancelled (at shutdown too), and wait() keeps waiting.
        state = FAILED
        work.exception = exc
        await _report_failure(work, exc, host)
    finally:
        host.settle(work, state)
        if span is not None:
            # The span reads the final state and exception from the task.
            span.__exit__(None, None, None)


async def _attempt(work: Work, host: Host) -> Any:
    """One attempt with the options: limiter held and timeout counted over all of it."""
    config = work.config
    if not work.is_async:
        if isinstance(work, BrokerWork):
            return await _enqueue(work, host)
        # The thread keeps the limiter until it returns, even past a timeout; an
        # awaitable the function returns runs under the same limiter and timeout.
        call = functools.partial(work.func, *work.args, **work.kwargs)
        return await host.call_sync(work, call, config.limiter, config.timeout)
    if config.limiter is None:
        return await _call_async_timed(work)
    work.blocked = "limiter"
    async with config.limiter:
        work.blocked = None
        return await _call_async_timed(work)


async def _enqueue(work: BrokerWork, host: Host) -> Any:
    """One attempt of a job: hand it to the broker, as ``limiter`` and ``timeout`` allow."""
    config = work.config
    if config.limiter is None:
        with anyio.fail_after(config.timeout):
            job = await work.enqueue()
    else:
        async with config.limiter:
            with anyio.fail_after(config.timeout):
                job = await work.enqueue()
    work.result = job
    host.mark_enqueued(work)
    return job


async def _call_async_timed(work: Work) -> Any:
    if work.config.timeout is None:
        return await work.func(*work.args, **work.kwargs)
    with anyio.fail_after(work.config.timeout):
        return await work.func(*work.args, **work.kwargs)


async def _run_attempts(work: Work, host: Host) -> Any:
    config = work.config
    retries = config.retries or 0
    while True:
        try:
            if work.entry is not None:  # durable: on disk before it runs, attempt counted
                await host.journal_attempt(work)
            return await _attempt(work, host)
        except Exception as exc:
            if (
                work.attempts > retries
                or (config.retry_on is not None and not isinstance(exc, config.retry_on))
                or (work.entry is not None and not host.retryable(work))
            ):
                raise
            wait = retry_wait(work)
            host.mark_retrying(work, exc, wait)
            work.blocked = "retry"
            await anyio.sleep(wait)
            busy = work.busy_thread
            if busy is not None:
                # Never overlap the previous attempt: it still runs in its thread.
                work.busy_thread = None
                await busy.wait()
            work.blocked = None
            work.attempts += 1


async def _report_failure(work: Work, exc: BaseException, host: Host) -> None:
    log_failure(work, exc)
    handler = work.config.on_error
    if handler is None:
        return
    timeout = work.config.timeout
    if host.handlers_cancelled:
        logger.warning(
            "on_error handler of task %s (id %s) was not run: shutdown's grace period is over",
            work.name,
            work.id,
        )
        return
    # Shielding protects the work, not its handler: it runs under the task's timeout,
    # and shutdown cancels it after the grace period like unshielded work.
    with anyio.CancelScope() as scope:
        work.handler_scope = scope
        try:
            with anyio.fail_after(timeout):
                if is_async_callable(handler):
                    await handler(work, exc)  # type: ignore[misc]
                else:
                    call = functools.partial(handler, work, exc)
                    await host.call_sync(work, call, None, None)
        except host.cancelled_exc:
            raise
        except BaseException as handler_exc:
            logger.error(
                "on_error handler of task %s (id %s) raised %s; the error is logged and ignored",
                work.name,
                work.id,
                safe_repr(handler_exc),
                exc_info=handler_exc,
            )
        finally:
            work.handler_scope = None
    if scope.cancelled_caught:
        logger.warning(
            "on_error handler of task %s (id %s) was cancelled at shutdown",
            work.name,
            work.id,
        )
