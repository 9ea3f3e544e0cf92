"""The monitor page in a real headless Chromium, against a real uvicorn on 127.0.0.1.

Debian's ``chromium`` (``scripts/services`` installs it) driven by Playwright through its
executable path; Playwright never downloads a browser here. Its sync API runs an event
loop of its own, so it lives in module-scoped fixtures and these tests are plain sync
tests; the server runs its own loop in a thread. The screenshots in ``docs/img`` are
taken here.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fastapi_tasks import Tasks, add_tasks
from fastapi_tasks.monitor import monitor_router

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
TOKEN = "monitor-test-token"
TIMEOUT = 15_000  # ms, for each wait on the page


# -- the app under test ----------------------------------------------------------------------

bearer = HTTPBearer()


def require_token(credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> None:
    if not secrets.compare_digest(credentials.credentials, TOKEN):
        raise HTTPException(403, "wrong token")


def build_app() -> FastAPI:
    app = FastAPI()
    add_tasks(app)
    app.include_router(monitor_router(), prefix="/tasks")
    app.include_router(monitor_router(dependencies=[Depends(require_token)]), prefix="/guarded")
    gates: dict[int, asyncio.Event] = {}

    async def resize_image(seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def charge_card(order: int) -> None:
        await asyncio.sleep(0.01)
        raise ValueError(f"card declined for order {order}")

    async def hold(key: int) -> None:
        await gates.setdefault(key, asyncio.Event()).wait()

    @app.post("/orders")
    async def orders(tasks: Tasks, count: int = 3) -> dict[str, int]:
        for number in range(count):
            tasks.task(name="resize image").schedule(resize_image, 0.01 + number * 0.005)
        tasks.after_route.task(name="write audit log").schedule(resize_image, 0.004)
        tasks.after_response.task(name="send receipt").schedule(resize_image, 0.02)
        return {"scheduled": count + 2}

    @app.post("/payments")
    async def payments(tasks: Tasks) -> dict[str, int]:
        task = tasks.after_response.task(name="charge card").schedule(charge_card, 1234)
        return {"id": task.id}

    @app.post("/exports")
    async def exports(tasks: Tasks) -> dict[str, int]:
        task = tasks.task(name="build export").schedule(hold, len(gates))
        return {"id": task.id}

    return app


async def charge_card_durably(order: int) -> None:
    raise ValueError(f"card declined for order {order}")


def build_journal_app(journal: Path) -> FastAPI:
    """An app with a journal: durable work, found again by name, so module-level."""
    app = FastAPI()
    add_tasks(app, journal=journal)
    app.include_router(monitor_router(), prefix="/tasks")

    @app.post("/payments")
    async def payments(tasks: Tasks) -> dict[str, str]:
        tasks.after_response.task(durable=True, name="charge card durably").schedule(
            charge_card_durably, 4321
        )
        return {"scheduled": "charge card durably"}

    return app


class Server:
    def __init__(self, app: FastAPI | None = None) -> None:
        self.app = build_app() if app is None else app
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        self.socket = listener
        self.port = listener.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="error", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.socket]))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def post(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self.url(path), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url(path), timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
        return result


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve(Server())


@pytest.fixture(scope="module")
def journal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    journal = tmp_path_factory.mktemp("journal") / "tasks.db"
    yield from serve(Server(build_journal_app(journal)))


def serve(running: Server) -> Iterator[Server]:
    running.thread.start()
    for _ in range(200):
        if running.server.started:
            break
        running.thread.join(0.05)  # the server's own thread: wait for it, bounded
    assert running.server.started, "uvicorn did not start"
    yield running
    running.server.should_exit = True
    running.thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/services"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(server.url("/tasks/"))
    expect(opened.locator("#status")).to_have_text("Live", timeout=TIMEOUT)
    yield opened
    context.close()
    assert errors == []


def count(page: Page, key: str) -> int:
    text = page.locator(f'[data-count="{key}"] dd').inner_text()
    return int(text.replace(",", "").replace("\N{NO-BREAK SPACE}", ""))


# -- the cases ---------------------------------------------------------------------------------


def test_counts_and_chart_change_without_a_reload(page: Page, server: Server) -> None:
    page.evaluate("window.stillTheSamePage = true")
    before = count(page, "succeeded")
    total_before = int(page.locator("#chart").get_attribute("data-total") or "0")
    server.post("/orders?count=4")
    # Functions, not expressions: the page's CSP forbids eval, which expressions need.
    page.wait_for_function(
        "(least) => Number(document.querySelector('[data-count=succeeded] dd')"
        ".textContent.replace(/\\D/g, '')) >= least",
        arg=before + 6,
        timeout=TIMEOUT,
    )
    page.wait_for_function(
        "(least) => Number(document.querySelector('#chart').dataset.total) >= least",
        arg=total_before + 6,
        timeout=TIMEOUT,
    )
    assert page.evaluate("window.stillTheSamePage") is True
    assert "finished in the last 15 minutes" in page.locator("#chart-text").inner_text()
    expect(page.locator("#timeline li").first).to_contain_text("POST /orders")
    expect(page.locator("#durations")).to_contain_text("resize image")


def test_a_failure_shows_its_traceback(page: Page, server: Server) -> None:
    task_id = server.post("/payments")["id"]
    item = page.locator(f'#failures li[data-task="{task_id}"]')
    expect(item).to_contain_text("ValueError: card declined for order 1234", timeout=TIMEOUT)
    item.get_by_role("button").click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#detail-traceback")).to_contain_text("in charge_card")
    expect(page.locator("#detail-fields")).to_contain_text("POST /payments")
    assert "Arguments" not in page.locator("#detail-fields").inner_text()  # hidden by default
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_cancel_stops_a_running_task_from_the_keyboard(page: Page, server: Server) -> None:
    task_id = server.post("/exports")["id"]
    row = page.locator(f'#running tr[data-task="{task_id}"]')
    expect(row).to_contain_text("build export", timeout=TIMEOUT)
    row.get_by_role("button", name="Cancel").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_have_text(f"Task {task_id} cancelled.", timeout=TIMEOUT)
    expect(row).to_have_count(0, timeout=TIMEOUT)
    detail = server.get(f"/tasks/api/tasks/{task_id}")
    assert detail["state"] == "cancelled"


def test_a_client_behind_a_proxy_is_refused(browser: Browser, server: Server) -> None:
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": "203.0.113.7"})
    try:
        stranger = context.new_page()
        response = stranger.goto(server.url("/tasks/"))
        assert response is not None
        assert response.status == 403
        assert "dependencies=[...]" in stranger.content()
    finally:
        context.close()


def test_a_guard_is_honoured(browser: Browser, server: Server) -> None:
    anonymous = browser.new_context()
    try:
        response = anonymous.new_page().goto(server.url("/guarded/"))
        assert response is not None
        assert response.status in (401, 403)
    finally:
        anonymous.close()
    # With the token the guard lets in even a request that looks proxied.
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "203.0.113.7"}
    trusted = browser.new_context(extra_http_headers=headers)
    try:
        page = trusted.new_page()
        response = page.goto(server.url("/guarded/"))
        assert response is not None
        assert response.status == 200
        expect(page.locator("#status")).to_have_text("Live", timeout=TIMEOUT)
        expect(page.locator('[data-count="succeeded"]')).to_be_visible()
    finally:
        trusted.close()
    with pytest.raises(urllib.error.HTTPError):
        server.get("/guarded/api/summary")


def test_the_journal_panel_shows_a_failed_durable_row(
    browser: Browser, server: Server, journal_server: Server
) -> None:
    # Without a journal the panel stays hidden.
    plain = browser.new_context()
    try:
        page = plain.new_page()
        page.goto(server.url("/tasks/"))
        expect(page.locator("#status")).to_have_text("Live", timeout=TIMEOUT)
        expect(page.locator("#journal")).to_be_hidden()
    finally:
        plain.close()
    journal_server.post("/payments")
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(journal_server.url("/tasks/"))
        panel = page.locator("#journal")
        expect(panel).to_be_visible(timeout=TIMEOUT)
        expect(panel.get_by_role("heading", name="Durable work (journal)")).to_be_visible()
        # The row lands in the journal when the work ends: the panel shows it on a later read.
        row = page.locator("#journal-rows tbody tr").filter(has_text="charge card durably")
        expect(row).to_contain_text("failed", timeout=TIMEOUT)
        expect(row).to_contain_text("POST /payments")
        expect(row).to_contain_text("(this process)")
        expect(page.locator('[data-journal-count="failed"] dd')).to_have_text("1")
        failure = page.locator("#journal-failures li").first
        expect(failure).to_contain_text("ValueError: card declined for order 4321")
        traceback = failure.locator("pre")
        expect(traceback).to_be_hidden()
        failure.get_by_text("Traceback", exact=True).focus()
        page.keyboard.press("Enter")
        expect(traceback).to_be_visible()
        expect(traceback).to_contain_text("Traceback (most recent call last)")
        expect(traceback).to_contain_text("in charge_card_durably")
        assert errors == []
    finally:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots_for_the_docs(browser: Browser, server: Server, scheme: str) -> None:
    for _ in range(3):
        server.post("/orders?count=3")
    server.post("/payments")
    server.post("/exports")  # something running, with its Cancel button
    context = browser.new_context(
        viewport={"width": 1366, "height": 900},
        color_scheme="dark" if scheme == "dark" else "light",
        device_scale_factor=1,
    )
    try:
        page = context.new_page()
        page.goto(server.url("/tasks/"))
        expect(page.locator("#running tbody tr").first).to_be_visible(timeout=TIMEOUT)
        expect(page.locator("#failures li").first).to_be_visible(timeout=TIMEOUT)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(17, 20, 24)") is (scheme == "dark")
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"monitor-{scheme}.png"), full_page=True)
    finally:
        context.close()
