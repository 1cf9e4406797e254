"""The operators' console in a real browser: Debian's chromium, driven by Selenium through Debian's chromedriver.

- `browser` (session): one headless chromium for the whole run; a page load costs milliseconds, a browser start
  about two seconds. Selenium is handed the paths of the Debian binaries, so its Selenium Manager never looks
  for (or downloads) a driver or a browser of its own. A missing binary fails every browser test with the
  command that installs it: a console nobody could test in a browser is a failure, not a skip.
- `console` (per test): the same browser, its cookies cleared, logged in through the real login form of
  pytest-django's `live_server` (a transactional database, so the session Celery `worker` sees the same rows
  as the pages do). `console.wait` waits on a condition with WebDriverWait; nothing here sleeps.
- Every test that used the browser leaves a screenshot of the page it ended on in
  var/test-artifacts/browser/<test>.png, passed or failed, kept as an artifact of the run.
- The GPU devcluster fixtures are the deployment tests' (one baseline, reset after each test), imported, not
  copied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.db import connections
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.deployments.conftest import (  # noqa: F401 - fixtures, registered by importing them
    cluster,
    gpu,
    gpu_baseline,
    gpu_reset,
)
from tests.worker import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "var" / "test-artifacts" / "browser"
PASSWORD = "a-long-test-password"  # tests/conftest.py's admin_user
RUN_PAGE = re.compile(r"^/admin/core/run/(?P<pk>[0-9a-f-]+)/change/$")


@pytest.fixture(autouse=True)
def _loopback(settings):
    # The devclusters listen on loopback; the live server runs in this process and reads the same settings.
    settings.BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = True


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"the browser tests need Debian's chromium and chromedriver; missing: {', '.join(missing)}. "
            "Install them with `bash scripts/ensure_services.sh` (apt-get install chromium chromium-driver).",
            pytrace=False,
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the suite runs as root, where chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers' /dev/shm is small; chromium crashes when it fills
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    log = ROOT / "var" / "test-logs" / "chromedriver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    driver = webdriver.Chrome(
        service=Service(executable_path=str(CHROMEDRIVER), log_output=str(log)), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Console:
    """The logged-in browser and the live server it talks to."""

    driver: WebDriver
    base_url: str

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        return urlparse(self.driver.current_url).path

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait(self, condition: Callable[[WebDriver], Any], *, timeout: float = 30, what: str = "") -> Any:
        """Poll ``condition`` (every 0.1 s, up to ``timeout``) until it returns a truthy value; elements missing or
        replaced by a refresh meanwhile are retried, not errors."""
        waiter = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        return waiter.until(
            condition, message=f"waiting {timeout:g} s for {what} on {self.driver.current_url}"
        )

    def wait_for_path(self, pattern: re.Pattern, *, timeout: float = 30) -> re.Match:
        return self.wait(
            lambda _d: pattern.match(self.path), timeout=timeout, what=f"a page at {pattern.pattern}"
        )

    def submit(self, css: str) -> None:
        """Click a button or link that leads to another page and wait until the browser left this one."""
        old = self.find("html")
        self.find(css).click()
        self.wait(lambda _d: _is_stale(old), what=f"the page after clicking {css}")

    def log_in(self, username: str, password: str) -> None:
        self.find("#id_username").clear()
        self.find("#id_username").send_keys(username)
        self.find("#id_password").send_keys(password)
        self.submit("#login-form input[type=submit]")


def _is_stale(element) -> bool:
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    return False


@pytest.fixture
def anonymous_console(browser, live_server, request, monkeypatch) -> Iterator[Console]:
    """The session's browser with no cookies (no session), pointed at this test's live server."""
    # The browser keeps its HTTP connections open, and the live server's thread for each keeps its database
    # connection while CONN_MAX_AGE lasts: still open when the test database is dropped at the end. Each
    # request closes its own here (the dict is the one every thread's connection is made from).
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)
    browser.delete_all_cookies()
    console = Console(browser, live_server.url)
    yield console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}.png"))
    # A page left open keeps refreshing its fragments: it would query the database while the next test's flush
    # (or, at the end, the test database's removal) runs.
    browser.get("about:blank")


@pytest.fixture
def console(anonymous_console, admin_user) -> Console:
    """Logged in as the superuser through the login form, on the dashboard."""
    anonymous_console.open("/admin/login/?next=/admin/")
    anonymous_console.log_in(admin_user.username, PASSWORD)
    anonymous_console.wait(lambda _d: anonymous_console.path == "/admin/", what="the dashboard after login")
    return anonymous_console


TERMINAL = {"succeeded", "failed", "cancelled"}


def run_status(console: Console) -> str:
    return console.find("#run-status").text.strip()


def wait_for_run_status(console: Console, wanted: set[str], *, timeout: float) -> str:
    """Wait until the run page's ``#run-status`` shows one of ``wanted`` (or a terminal status, which ends the
    wait early: a failed run is not worth waiting 90 s for) and return it."""
    return console.wait(
        lambda _d: (status := run_status(console)) in wanted | TERMINAL and status,
        timeout=timeout,
        what=f"#run-status to show {sorted(wanted)}",
    )


def mark_page(console: Console) -> None:
    """Set a marker on the page's window: it survives the page's own refreshes, not a reload or navigation."""
    console.driver.execute_script("window.budclusterNotReloaded = true;")


def page_not_reloaded(console: Console) -> bool:
    return console.driver.execute_script("return window.budclusterNotReloaded === true;") is True
