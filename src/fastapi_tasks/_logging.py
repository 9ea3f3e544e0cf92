"""A one-line logging setup that makes our lines look like uvicorn's."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]

_MARK = "fastapi_tasks_handler"


class _LevelPrefixFormatter(logging.Formatter):
    """``INFO:     message``, the way uvicorn writes its own lines, without colours."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{record.levelname}:".ljust(9)
        return f"{prefix} {super().format(record)}"


def configure_logging(level: int | str = logging.INFO) -> logging.Handler:
    """Print the library's log lines to standard error, formatted like uvicorn's.

    Under a plain ``uvicorn main:app`` nothing configures the ``fastapi_tasks``
    logger: its warnings and errors print as bare messages, and the INFO line that
    sums up a shutdown never shows. Call this once at import time of your app
    (``configure_logging()``) to get ``LEVEL:    message`` lines, tracebacks of
    failing tasks included, from ``level`` up. Calling it again replaces the
    handler it added instead of adding a second one. Records still propagate to the
    root logger, so a logging setup of your own (or pytest's ``caplog``) sees them.

    Args:
        level: The lowest level to print, as a number or a name (``"DEBUG"``).

    Returns:
        The handler added to the ``fastapi_tasks`` logger.
    """
    logger = logging.getLogger("fastapi_tasks")
    for handler in list(logger.handlers):
        if getattr(handler, "name", None) == _MARK:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_MARK)
    handler.setFormatter(_LevelPrefixFormatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
