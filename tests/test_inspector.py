"""The inspector page in headless Chromium against the real server on a loopback port.

Needs ``chromium`` and ``chromium-driver`` (Debian packages) and ``selenium``. Skips without them,
except in CI (``CI=true``), where it fails: CI must run it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import IN_CI
from tiamat_hooks.models import Scope, make_record
from tiamat_hooks.stores import SQLiteMemoryStore
from tiamat_hooks.stores.cloud import TiamatCloudStore

pytestmark = pytest.mark.slow

KEY = "inspector-key"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _need(what: str) -> NoReturn:
    reason = (
        f"{what} is not available "
        "(apt-get install -y chromium chromium-driver; pip install selenium)"
    )
    if IN_CI:
        pytest.fail(reason + " — CI must run the inspector test")
    pytest.skip(reason)


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    """The app on a free loopback port, served by uvicorn in a background thread."""
    import uvicorn

    from tiamat_hooks.server import create_app

    store = SQLiteMemoryStore(tmp_path / "memory.db")
    app = create_app(store, keys={KEY: "inspect"}, close_store=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound before uvicorn starts: no race for the port
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    pause = threading.Event()  # never set: only its bounded wait is used, to poll
    while thread.is_alive() and not server.started:
        pause.wait(0.05)
    if not server.started:
        pytest.fail("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need("selenium")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        _need("chromium / chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def seed(url: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = TiamatCloudStore(
            url, KEY, outbox=tmp_path / "seed-outbox.db", strict=True, recall_deadline=30.0
        )
        try:
            texts = ["Plan the garden: tomatoes by the fence", "Basil goes next to the tomatoes"]
            await store.add(
                [
                    make_record(user_id="ana", session_id="garden", role=r, text=t)
                    for r, t in zip(["user", "assistant"], texts, strict=True)
                ]
            )
            await store.add(
                [make_record(user_id="ana", session_id="taxes", role="user", text="File by April")]
            )
            await store.add(
                [
                    make_record(
                        user_id="ana", session_id="garden", kind="summary", text="Garden layout"
                    ),
                    make_record(user_id="ana", kind="fact", text="Ana is allergic to mint"),
                ]
            )
            await store.add([make_record(user_id="ben", session_id="x", text="Ben's note")])
            assert len(await store.read(Scope("ana"))) == 5
        finally:
            await store.close()

    asyncio.run(go())


def test_inspector_browse_search_and_delete(server_url: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    seed(server_url, tmp_path)
    wait = WebDriverWait(browser, 30)

    def texts(css: str) -> list[str]:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]

    browser.get(server_url + "/")
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "use-key").click()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "users")).options) == 3)
    users = Select(browser.find_element(By.ID, "users"))
    assert [o.text for o in users.options][1:] == ["ana", "ben"]
    # The key is kept for this tab only.
    assert browser.execute_script("return sessionStorage.length") == 1

    users.select_by_value("ana")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sessions button")) == 3)
    assert sorted(texts("#sessions button")) == [
        "(no session) — 1 record(s)",
        "garden — 3 record(s)",
        "taxes — 1 record(s)",
    ]
    # Summaries and facts load one after the other: wait for each.
    wait.until(lambda d: texts("#summaries .text") == ["Garden layout"])
    wait.until(lambda d: texts("#facts .text") == ["Ana is allergic to mint"])

    browser.find_element(By.CSS_SELECTOR, '#sessions button[data-session="garden"]').click()
    wait.until(lambda d: len(texts("#turns .text")) == 2)
    assert texts("#turns .text") == [
        "Plan the garden: tomatoes by the fence",
        "Basil goes next to the tomatoes",
    ]  # in seq order
    assert texts("#turns .meta")[0].startswith("#1 · user")

    browser.find_element(By.ID, "search-input").send_keys("basil")
    browser.find_element(By.ID, "search-btn").click()
    wait.until(lambda d: len(texts("#results .text")) >= 1)
    assert texts("#results .text")[0] == "Basil goes next to the tomatoes"

    browser.find_element(By.ID, "delete-session").click()
    wait.until(ec.alert_is_present())
    alert = browser.switch_to.alert
    assert "garden" in alert.text
    alert.accept()
    wait.until(lambda d: "deleted 3 record(s)" in d.find_element(By.ID, "status").text)
    assert sorted(texts("#sessions button")) == [
        "(no session) — 1 record(s)",
        "taxes — 1 record(s)",
    ]

    # The server agrees: the session is gone, the rest of ana's memory and ben's are not.
    async def check() -> None:
        store = TiamatCloudStore(
            server_url, KEY, outbox=tmp_path / "check-outbox.db", strict=True, recall_deadline=30.0
        )
        try:
            assert [r.session_id for r in await store.read(Scope("ana"))] == [None, "taxes"]
            assert len(await store.read(Scope("ben"))) == 1
        finally:
            await store.close()

    asyncio.run(check())
