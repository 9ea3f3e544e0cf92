"""The one-line logging setup: our lines look like uvicorn's, tracebacks included."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI

from fastapi_tasks import TaskManager, configure_logging

from .conftest import serving

pytestmark = pytest.mark.anyio


async def send_mail() -> None:
    raise ConnectionError("smtp down")


async def test_configure_logging_prints_levels_tracebacks_and_the_summary(
    app: FastAPI, manager: TaskManager, capfd: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("fastapi_tasks")
    level = logger.level
    yours = logging.NullHandler()  # a handler of the user's own stays where it is
    logger.addHandler(yours)
    first = configure_logging()
    handler = configure_logging("INFO")  # again: replaces, never doubles
    try:
        assert first not in logger.handlers
        assert handler in logger.handlers
        async with serving(app):
            manager.task(name="mailer").schedule(send_mail)
            await manager.join(5)
        assert yours in logger.handlers
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(yours)
        logger.setLevel(level)
    err = capfd.readouterr().err
    assert "ERROR:    task mailer (id " in err
    assert "Traceback (most recent call last):" in err
    assert "ConnectionError: smtp down" in err
    assert "INFO:     task manager stopped: 0 completed, 0 failed" in err
    assert err.count("task mailer (id ") == 1
