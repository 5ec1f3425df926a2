"""The panel in a real headless browser: Debian's chromium driven by Playwright.

The app runs under uvicorn in a background thread on a free 127.0.0.1 port, against
a real database on each backend (conftest's `db`). Skipped (with the reason) when
/usr/bin/chromium or the playwright package is missing; .ci/run installs chromium.
"""

import os
import shutil
import socket
import threading
import time

import pytest

from liteq import backends, task

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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def panel_url(db):
    """Serve the panel (refreshing every 0.5 s) on a free port; yields its base URL."""
    from liteq.web import create_app
    port = _free_port()
    config = uvicorn.Config(create_app(db, refresh=0.5), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="panel", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


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


def test_the_panel_in_chromium(panel_url, browser, clean_registry, tmp_path):
    send_email, failed_id = _seed(clean_registry)
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    problems = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

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
