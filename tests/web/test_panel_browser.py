"""The panel in a real headless browser: Debian's chromium driven by Playwright.

The panel is a real `liteq monitor` process on a free 127.0.0.1 port, against a
real database on each backend (conftest's `db`); the browser logs in through the URL it prints. Skipped (with
the reason) when /usr/bin/chromium or the playwright package is missing; .ci/run
installs chromium.
"""

import os
import shutil
import time

import pytest

from liteq import backends, task

from support.monitor import Monitor

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_COPY = "/tmp/liteq-panel.png"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is missing (pip install -e '.[dev]')")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def panel(daemons):
    """`liteq monitor` refreshing its pages every 0.5 s, listening."""
    return Monitor(daemons, "--refresh", "0.5").wait_listening()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _seed(clean_registry):
    """A failed task, some done ones spread over the last minutes, and a pending one."""
    @task(queue="emails")
    def send_email(to, subject):
        return to

    store = backends.get_backend()
    failed_id = send_email.delay("broken@example.com", "Hi")
    done_ids = [send_email.delay(f"user{i}@example.com", "Hi") for i in range(6)]
    store.claim("w1", ["emails"], 10)
    t = time.time()
    store.record_outcomes(
        "w1", done=[(i, '"sent"', t - 60 * n - 1, t - 60 * n) for n, i in enumerate(done_ids)],
        failed=[(failed_id, "ConnectionRefusedError: [Errno 111] Connection refused\n"
                            "Traceback (most recent call last):\n  ...", t - 91, t - 90)])
    send_email.delay("waiting@example.com", "Later")
    return send_email, failed_id


def test_a_browser_without_the_token_only_sees_the_login_form(panel, browser, clean_registry):
    _, failed_id = _seed(clean_registry)
    page = browser.new_page()
    for path in ("/", "/failed", f"/tasks/{failed_id}", "/pools"):
        page.goto(panel.base + path, wait_until="load")
        assert page.url.startswith(panel.base + "/login?next="), page.url
        assert page.locator("input[name=token]").count() == 1
        assert "broken@example.com" not in page.content()
    assert page.locator("form[action='/logout']").count() == 0   # nobody to log out
    # The token typed into the form logs in as well as the printed address does.
    page.fill("input[name=token]", panel.login_url().split("token=", 1)[1])
    with page.expect_navigation():
        page.click("form[action=\"/login\"] button[type=submit]")
    assert page.url == panel.base + "/pools"
    assert page.locator("form[action='/logout']").count() == 1


def test_the_panel_in_chromium(panel, browser, clean_registry, tmp_path):
    send_email, failed_id = _seed(clean_registry)
    panel_url = panel.base
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    problems = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    # Log in through the address `liteq monitor` printed: the token leaves the address
    # bar at once, and the session cookie is HttpOnly and SameSite=Strict.
    login_url = panel.login_url()
    assert login_url and "?token=" in login_url, panel.stderr()
    page.goto(login_url, wait_until="load")
    assert page.url == panel_url + "/"
    session = [c for c in page.context.cookies() if c["name"] == "liteq_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert "token" not in page.evaluate("document.cookie")

    # The overview loads, draws its chart, and shows a task enqueued after it loaded.
    page.goto(panel_url + "/", wait_until="load")
    page.wait_for_selector(".chart svg rect.bar-done")
    assert "daemon not running" in page.inner_text("#daemon")
    assert page.inner_text("#stats .stat-failed .stat-value") == "1"
    new_id = send_email.delay("fresh@example.com", "Just now")
    page.wait_for_function(
        "() => document.querySelector('#stats .stat-pending .stat-value').textContent.trim()"
        " === '2'", timeout=10000)
    shot = tmp_path / "panel.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.exists() and shot.stat().st_size > 10000
    shutil.copyfile(shot, SCREENSHOT_COPY)

    # The task list picks the next one up by itself, without a reload.
    page.goto(panel_url + "/tasks", wait_until="load")
    assert page.locator(f"#task-{new_id}").count() == 1
    newer = send_email.delay("newest@example.com", "Even newer")
    page.wait_for_selector(f"#task-{newer}", timeout=10000)
    assert "newest" not in page.url  # same page: the refresh swapped the table in place

    # Retry turns the failed task back to pending.
    page.goto(panel_url + "/failed", wait_until="load")
    row = page.locator(f"#task-{failed_id}")
    assert "Connection refused" in row.inner_text()
    with page.expect_navigation():
        row.locator("button[data-action=retry]").click()
    assert backends.get_backend().get_task(failed_id)["status"] == "pending"
    assert "is pending again" in page.inner_text(".flash")
    assert page.locator(f"#task-{failed_id}").count() == 0

    # The task page of the retried task shows it pending.
    page.goto(f"{panel_url}/tasks/{failed_id}", wait_until="load")
    assert page.inner_text("#task-detail .badge") == "pending"
    page.screenshot(path=str(tmp_path / "task.png"), full_page=True)

    assert problems == [], "\n".join(problems)
