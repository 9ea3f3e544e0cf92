"""A checkout endpoint that uses all three timing modes of fastapi-tasks.

- the payment check starts at the endpoint's next ``await`` and runs while the
  endpoint still works (``tasks.schedule``);
- the order is finalized once the endpoint returned: handed over before the
  response starts, it runs alongside the response (``tasks.after_route.schedule``);
- the confirmation e-mail and the shipping notice go out once the client has
  the whole response (``tasks.after_response.schedule``).

None of them delays the response. Each step marks a :class:`Timeline`, so the
demo (``examples/demo.py``) can print when things happened. Sleeps stand in for
the payment provider, the database and the mail server.
"""

from __future__ import annotations

import time

import anyio
from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_tasks import TaskManager, Tasks, add_tasks
from fastapi_tasks.monitor import monitor_router

__all__ = ["CheckoutRequest", "CheckoutResult", "Timeline", "create_app"]


class Timeline:
    """Named moments, in milliseconds since :meth:`start` (or since creation)."""

    def __init__(self) -> None:
        self._origin = time.perf_counter()
        self.events: list[tuple[float, str]] = []

    def start(self) -> None:
        """Make now the zero point."""
        self._origin = time.perf_counter()

    def mark(self, label: str) -> None:
        """Note that ``label`` happened now."""
        self.events.append(((time.perf_counter() - self._origin) * 1000.0, label))

    @property
    def labels(self) -> list[str]:
        """The labels in the order they happened."""
        return [label for _, label in self.events]

    def at(self, label: str) -> float:
        """Milliseconds at which ``label`` happened."""
        for moment, seen in self.events:
            if seen == label:
                return moment
        raise KeyError(label)


class CheckoutRequest(BaseModel):
    cart_id: int
    email: str


class CheckoutResult(BaseModel):
    order_id: int
    payment_id: int
    status: str


def create_app(timeline: Timeline) -> tuple[FastAPI, TaskManager]:
    """Build the checkout app; every step marks ``timeline``."""
    app = FastAPI(title="checkout")
    manager = add_tasks(app)
    # The live monitor page at /tasks/: loopback clients only, as nothing guards it.
    app.include_router(monitor_router(), prefix="/tasks")

    async def validate_payment(payment_id: int) -> None:
        timeline.mark("validate_payment started (immediate)")
        await anyio.sleep(0.03)
        timeline.mark("validate_payment finished")

    async def finalize_order(order_id: int) -> None:
        timeline.mark("finalize_order started (after route)")
        await anyio.sleep(0.02)
        timeline.mark("finalize_order finished")

    async def send_confirmation_email(email: str, order_id: int) -> None:
        timeline.mark("send_confirmation_email started (after response)")
        await anyio.sleep(0.05)
        timeline.mark("send_confirmation_email finished")

    async def notify_shipping(order_id: int) -> None:
        timeline.mark("notify_shipping started (after response)")
        await anyio.sleep(0.05)
        timeline.mark("notify_shipping finished")

    @app.post("/checkout")
    async def checkout(order: CheckoutRequest, tasks: Tasks) -> CheckoutResult:
        timeline.mark("endpoint started")
        payment_id = 7000 + order.cart_id
        tasks.schedule(validate_payment, payment_id)
        timeline.mark("endpoint scheduled validate_payment, then awaits the database")

        await anyio.sleep(0.01)  # writing the order to the database
        order_id = 9000 + order.cart_id

        tasks.after_route.schedule(finalize_order, order_id)
        tasks.after_response.schedule(send_confirmation_email, order.email, order_id)
        tasks.after_response.schedule(notify_shipping, order_id)
        timeline.mark("endpoint returned")
        return CheckoutResult(order_id=order_id, payment_id=payment_id, status="processing")

    return app, manager
