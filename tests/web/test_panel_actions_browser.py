"""The panel in Chromium (Playwright, as tests/web/test_panel_browser.py drives it), on both
backends: mounted under a prefix in an app's own FastAPI app, behind a reverse proxy
with `liteq monitor --root-path`, search, bulk actions, queue pause and resume with a
real liteqd, schedule actions, and the layout on a 390 px wide phone.

Screenshots (PNG) of the desktop and phone layouts go to SHOTS as well as the
test's tmp dir, for people to look at.
"""

import http.client
import http.server
import os
import re
import shutil
import socket
import textwrap
import threading
import time
from urllib.parse import urlsplit

import pytest

from liteq import backends, control, register_schedule, scheduler, task
from liteq.launcher import start_daemon

from support.daemon_helpers import PYTHON
from support.monitor import Monitor
from support.processes import wait_for
from support.task_table import put_task

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = "/tmp/liteq-panel-shots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1360, "height": 900}

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is missing (pip install -e '.[dev]')")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    def up():
        assert proc.poll() is None, f"{what} exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    wait_for(up, 30, message=f"{what} is not listening")


def seed(db_label=""):
    """Tasks in two queues: done ones spread over the last minutes (for the charts),
    a failed one, a delayed one, pending ones. Returns the ids."""
    store = backends.get_backend()
    ids = {"done": [put_task(store, "shop.send_receipt",
                             f'{{"args":["order-{i}@example.com"],"kwargs":{{}}}}',
                             queue="emails") for i in range(6)]}
    ids["failed"] = put_task(store, "shop.charge_card", '{"args":["ACME-77"],"kwargs":{}}',
                             queue="payments", max_retries=0)
    store.claim("w1", ["emails", "payments"], 20)
    t = time.time()
    store.record_outcomes(
        "w1", done=[(i, '"sent"', t - 60 * n - 3 - n, t - 60 * n) for n, i in
                    enumerate(ids["done"])],
        failed=[(ids["failed"], "CardDeclined: card 4242 declined by the bank\nTraceback "
                                "(most recent call last):\n  File \"shop.py\", line 9",
                 t - 95, t - 90)])
    ids["later"] = put_task(store, "shop.send_reminder", '{"args":["bob@example.com"],'
                            '"kwargs":{}}', queue="emails", delay=7200)
    ids["pending"] = [put_task(store, "shop.make_invoice", f'{{"args":[{i}],"kwargs":{{}}}}',
                               queue="payments") for i in range(3)]
    return ids


def login(page, url):
    page.goto(url, wait_until="load")
    assert "/login" not in page.url, page.url


def track(page):
    """Record failed responses and console errors of a page."""
    problems = []
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 else None)
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    return problems


def crawl(page, origin, prefix, start, limit=60):
    """Visit every page reachable by a link from `start` under `prefix`, and fetch every
    link, stylesheet, script and image each page names. Returns the paths visited.
    Every URL must stay under the prefix; every fetch must answer below 400."""
    seen, queue, visited = set(), [start], []
    while queue and len(visited) < limit:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        resp = page.goto(origin + path, wait_until="load")
        assert resp is not None and resp.status < 400, (path, resp and resp.status)
        visited.append(path)
        urls = page.eval_on_selector_all(
            "a[href], link[href], script[src], img[src], form[action]",
            "els => els.map(e => e.getAttribute('href') || e.getAttribute('src') "
            "|| e.getAttribute('action'))")
        for url in urls:
            if not url.startswith("/"):
                continue
            assert url.startswith(prefix + "/"), f"{url} on {path} is outside {prefix}"
            if url.startswith(prefix + "/static/") or url.startswith(prefix + "/api/") \
                    or url.endswith("/metrics"):
                got = page.request.get(origin + url)
                assert got.status < 400, (url, got.status)
                continue
            if url.endswith(("/retry", "/cancel", "/bulk", "/logout", "/scale", "/pause",
                             "/resume", "/run", "/enable", "/disable")):
                continue  # forms that change things: exercised elsewhere
            if "page=" in url or "before=" in url:
                continue
            queue.append(url)
    return visited


# ---- a prefix in the app's own FastAPI app --------------------------------------------

HOST_APP = textwrap.dedent("""
    import sys

    import uvicorn
    from fastapi import FastAPI

    from liteq.web import create_app

    app = FastAPI()


    @app.get("/")
    def home():
        return {"app": "the shop"}


    app.mount("/admin/queue", create_app(token=sys.argv[2], refresh=0.5))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
""")


def test_mounted_in_a_fastapi_app_under_a_prefix(daemons, browser, tmp_path):
    ids = seed()
    script = tmp_path / "shop_app.py"
    script.write_text(HOST_APP)
    port = free_port()
    proc = daemons.popen([PYTHON, str(script), str(port), "prefix-s3cret"],
                         stdout=open(tmp_path / "app.out", "wb"),
                         stderr=open(tmp_path / "app.err", "wb"))
    wait_port(port, proc, "the FastAPI app")
    origin = f"http://127.0.0.1:{port}"
    page = browser.new_page(viewport=DESKTOP)
    problems = track(page)
    # Not logged in: the login form under the prefix, and its form logs in.
    page.goto(origin + "/admin/queue/tasks", wait_until="load")
    assert urlsplit(page.url).path == "/admin/queue/login", page.url
    page.fill("input[name=token]", "prefix-s3cret")
    with page.expect_navigation():
        page.click("form button[type=submit]")
    assert urlsplit(page.url).path == "/admin/queue/tasks", page.url
    visited = crawl(page, origin, "/admin/queue", "/admin/queue/")
    for path in ("/admin/queue/", "/admin/queue/tasks", "/admin/queue/failed",
                 "/admin/queue/schedules", "/admin/queue/pools",
                 f"/admin/queue/tasks/{ids['failed']}"):
        assert any(v.split("?")[0] == path for v in visited), (path, visited)
    # The stylesheet applied (the top bar is dark) and the script ran (the chart).
    page.goto(origin + "/admin/queue/", wait_until="load")
    page.wait_for_selector(".chart svg rect.bar-done")
    assert page.eval_on_selector(".topbar", "e => getComputedStyle(e).backgroundColor") \
        != "rgba(0, 0, 0, 0)"
    # An action under the prefix comes back under it.
    page.goto(origin + "/admin/queue/failed", wait_until="load")
    with page.expect_navigation():
        page.click(f"#task-{ids['failed']} button[data-action=retry]")
    assert urlsplit(page.url).path == "/admin/queue/failed"
    assert "is pending again" in page.inner_text(".flash")
    assert backends.get_backend().get_task(ids["failed"])["status"] == "pending"
    # The host app's own routes are still its own.
    assert page.request.get(origin + "/").json() == {"app": "the shop"}
    # Log out, under the prefix too.
    with page.expect_navigation():
        page.click("#logout")
    assert urlsplit(page.url).path == "/admin/queue/login"
    assert problems == [], "\n".join(problems)


# ---- behind a reverse proxy with --root-path ---------------------------------------------

class StripPrefixProxy:
    """A small real HTTP reverse proxy: /PREFIX/... goes to the upstream as /...,
    Host passed through (as nginx's `location /queue/ { proxy_pass http://up/; }`)."""

    def __init__(self, prefix, upstream_port):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def relay(self):
                if not (self.path == prefix or self.path.startswith(prefix + "/")):
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                proxy.seen.append(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=20)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path[len(prefix):] or "/", body=body,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_HEAD = relay

        self.seen = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_liteq_monitor_root_path_behind_a_reverse_proxy(daemons, browser):
    ids = seed()
    monitor = Monitor(daemons, "--root-path", "/queue", "--refresh", "0.5").wait_listening()
    login_url = monitor.login_url()
    assert login_url.startswith(f"http://127.0.0.1:{monitor.port}/queue/?token="), login_url
    proxy = StripPrefixProxy("/queue", monitor.port)
    try:
        origin = f"http://127.0.0.1:{proxy.port}"
        page = browser.new_page(viewport=DESKTOP)
        problems = track(page)
        login(page, login_url.replace(f":{monitor.port}/", f":{proxy.port}/"))
        assert urlsplit(page.url).path == "/queue/"
        visited = crawl(page, origin, "/queue", "/queue/")
        assert {"/queue/tasks", "/queue/schedules", "/queue/pools", "/queue/failed"} <= \
            {v.split("?")[0] for v in visited}
        assert all(p.startswith("/queue") for p in proxy.seen)
        # Search and an action through the proxy.
        page.goto(origin + "/queue/tasks", wait_until="load")
        page.fill("input[name=q]", "acme-77")
        with page.expect_navigation():
            page.click("#task-filters button[type=submit]")
        assert urlsplit(page.url).path == "/queue/tasks"
        assert page.locator(f"#task-{ids['failed']}").count() == 1
        with page.expect_navigation():
            page.click(f"#task-{ids['failed']} button[data-action=retry]")
        assert urlsplit(page.url).path == "/queue/tasks"
        assert backends.get_backend().get_task(ids["failed"])["status"] == "pending"
        assert problems == [], "\n".join(problems)
    finally:
        proxy.close()


# ---- search, bulk actions, schedules, pause/resume --------------------------------------

@pytest.fixture
def panel(daemons):
    return Monitor(daemons, "--refresh", "0.5", "--timezone", "UTC").wait_listening()


def test_search_and_bulk_actions_in_the_browser(panel, browser, tmp_path):
    ids = seed()
    page = browser.new_page(viewport=DESKTOP)
    problems = track(page)
    page.on("dialog", lambda d: d.accept())
    login(page, panel.login_url())
    # Search by argument text, by error text, by id.
    for text, want in (("order-3@", [ids["done"][3]]), ("declined by the BANK", [ids["failed"]]),
                       (f"#{ids['later']}", [ids["later"]])):
        page.goto(panel.base + "/tasks", wait_until="load")
        page.fill("input[name=q]", text)
        with page.expect_navigation():
            page.press("input[name=q]", "Enter")
        shown = [int(i) for i in page.eval_on_selector_all(
            "#task-list tr[data-task-id]", "rs => rs.map(r => r.dataset.taskId)")]
        assert shown[:1] == want, (text, shown)
    # The delayed task shows when it is due, with the zone.
    due = page.inner_text(f"#task-{ids['later']} td[data-label=Due]")
    assert re.search(r"in (1h 59m|2h 00m)", due) and "UTC" in due, due
    # Bulk cancel of the payments queue's pending tasks: confirm page, then done.
    page.goto(panel.base + "/tasks?queue=payments&status=pending", wait_until="load")
    page.click("#bulk summary")
    with page.expect_navigation():
        page.click("button[data-bulk=cancel]")
    assert page.inner_text("#confirm-count") == "3"
    page.screenshot(path=str(tmp_path / "confirm.png"))
    assert {backends.get_backend().get_task(i)["status"] for i in ids["pending"]} == {"pending"}
    with page.expect_navigation():
        page.click("#confirm-bulk")
    assert "3 tasks cancelled." in page.inner_text(".flash")
    assert urlsplit(page.url).query == "queue=payments&status=pending"
    assert {backends.get_backend().get_task(i)["status"] for i in ids["pending"]} == \
        {"cancelled"}
    # The confirmation form is CSRF-protected: a stale token is refused.
    page.goto(panel.base + "/tasks?queue=payments", wait_until="load")
    page.click("#bulk summary")
    with page.expect_navigation():
        page.click("button[data-bulk=retry]")
    page.eval_on_selector("form.confirm-buttons input[name=csrf_token]",
                          "e => e.value = 'forged-' + e.value")
    with page.expect_navigation():
        page.click("#confirm-bulk")
    assert "CSRF token mismatch" in page.content()
    assert {backends.get_backend().get_task(i)["status"] for i in ids["pending"]} == \
        {"cancelled"}
    problems[:] = [p for p in problems if "403" not in p]  # the refusal itself
    assert problems == [], "\n".join(problems)


def test_schedule_actions_in_the_browser(panel, browser, clean_registry):
    @task(queue="reports")
    def nightly(kind):
        return kind

    register_schedule(nightly, "0 9 * * *", "full", name="berlin-9am", tz="Europe/Berlin")
    store = backends.get_backend()
    page = browser.new_page(viewport=DESKTOP)
    problems = track(page)
    page.on("dialog", lambda d: d.accept())
    login(page, panel.login_url())
    page.goto(panel.base + "/schedules", wait_until="load")
    row = "tr[data-schedule=berlin-9am]"
    text = page.inner_text(f"{row} td[data-label='Next run']")
    assert re.search(r"09:00:00 CES?T", text) and re.search(r"0[78]:00:00 UTC", text), text
    with page.expect_navigation():
        page.click(f"{row} button[data-action=disable]")
    assert "is disabled" in page.inner_text(".flash")
    assert not store.get_schedule("berlin-9am")["enabled"]
    with page.expect_navigation():
        page.click(f"{row} button[data-action=enable]")
    assert store.get_schedule("berlin-9am")["enabled"]
    before = {t["id"] for t in store.find_tasks(queue="reports")}
    with page.expect_navigation():
        page.click(f"{row} button[data-action=run]")
    assert "is due now" in page.inner_text(".flash")
    # The scheduler fires it (liteqd's; here this process's, which loaded the task).
    fired = scheduler.fire_due(store)
    new = [t for t in store.find_tasks(queue="reports") if t["id"] not in before]
    assert [t["id"] for t in new] == fired and len(new) == 1
    assert new[0]["status"] == "pending" and '"full"' in new[0]["payload"]
    assert problems == [], "\n".join(problems)


APP = textwrap.dedent("""
    from liteq import task

    @task(queue="emails")
    def send(to):
        return to
""")


def test_pause_and_resume_a_queue_from_the_panel(panel, browser, tmp_path):
    seed()
    app_file = tmp_path / "pause_app_tasks.py"
    app_file.write_text(APP)
    daemon = start_daemon(str(app_file), concurrency=1, queues="emails,payments",
                          log_path=str(tmp_path / "liteqd.log"))
    try:
        page = browser.new_page(viewport=DESKTOP)
        problems = track(page)
        login(page, panel.login_url())
        page.goto(panel.base + "/", wait_until="load")
        pause = "button[data-action=pause][data-queue=payments]"
        page.wait_for_selector(pause, timeout=10000)
        with page.expect_navigation():
            page.click(pause)
        assert "Queue payments is paused" in page.inner_text(".flash")
        assert "payments" in control.status(include_queues=False)["paused"]
        resume = "button[data-action=resume][data-queue=payments]"
        page.wait_for_selector(resume, timeout=10000)
        with page.expect_navigation():
            page.click(resume)
        assert "Queue payments is resumed" in page.inner_text(".flash")
        assert "payments" not in control.status(include_queues=False)["paused"]
        # With a daemon, the overview's queue table and the pools' children at 390 px.
        phone = browser.new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True)
        problems += track(phone)
        login(phone, panel.login_url())
        kind = "pg" if backends.is_postgres(os.environ["LITEQ_DB"]) else "sqlite"
        for name, path in (("overview-daemon", "/"), ("pools-daemon", "/pools")):
            phone.goto(panel.base + path, wait_until="load")
            shoot(phone, tmp_path, f"{kind}-phone-{name}")
            wide = phone.evaluate(WIDE_ELEMENTS, PHONE["width"])
            assert not wide, (name, wide)
            in_view(phone, "#logout", PHONE["width"])
            if name == "overview-daemon":
                in_view(phone, "button[data-action=pause]", PHONE["width"])
            else:
                in_view(phone, ".scale-form button", PHONE["width"])
        assert problems == [], "\n".join(problems)
    finally:
        assert daemon.stop() == 0


# ---- 390 px wide -----------------------------------------------------------------------

# The elements that reach past the right edge of a viewport `width` wide (what makes
# a page scroll sideways), each as "tag.class text...".
WIDE_ELEMENTS = """width => Array.from(document.querySelectorAll('body *'))
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.tagName + '.' + e.className + ' ' + (e.textContent || '').trim().slice(0, 40))"""


def shoot(page, tmp_path, name):
    """A full-page screenshot, and one of the first screenful (-top)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.screenshot(path=str(tmp_path / f"{name}-top.png"))
    os.makedirs(SHOTS, exist_ok=True)
    for shot in (f"{name}.png", f"{name}-top.png"):
        shutil.copyfile(tmp_path / shot, os.path.join(SHOTS, shot))
    return path


def in_view(page, selector, width):
    """Every element matching selector is within [0, width] horizontally."""
    boxes = page.eval_on_selector_all(selector, "els => els.map(e => { const r = "
                                      "e.getBoundingClientRect(); return [r.left, r.right]; })")
    assert boxes, f"nothing matches {selector}"
    for left, right in boxes:
        assert left >= 0 and right <= width + 0.5, (selector, left, right)


def test_the_layout_at_390_px_and_on_a_desktop(panel, browser, tmp_path, db, clean_registry):
    ids = seed()

    @task(queue="reports")
    def morning_report(kind):
        return kind

    register_schedule(morning_report, "0 9 * * 1-5", "sales", name="weekday-report",
                      tz="Europe/Berlin")
    kind = "pg" if backends.is_postgres(db) else "sqlite"
    phone = browser.new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                             has_touch=True)
    desk = browser.new_page(viewport=DESKTOP)
    problems = track(phone) + track(desk)
    login(phone, panel.login_url())
    login(desk, panel.login_url())
    pages = {"overview": "/", "tasks": "/tasks", "failed": "/failed",
             "task": f"/tasks/{ids['failed']}", "schedules": "/schedules", "pools": "/pools",
             "search": "/tasks?q=example.com"}
    for name, path in pages.items():
        phone.goto(panel.base + path, wait_until="load")
        wide = phone.evaluate("() => [document.documentElement.scrollWidth, "
                              "document.documentElement.clientWidth]")
        assert wide[0] <= wide[1] == PHONE["width"], (name, wide)
        in_view(phone, ".nav a", PHONE["width"])
        in_view(phone, "#logout", PHONE["width"])
        if name in ("tasks", "failed", "task", "search"):
            in_view(phone, "button[data-action]", PHONE["width"])
        shoot(phone, tmp_path, f"{kind}-phone-{name}")
        desk.goto(panel.base + path, wait_until="load")
        shoot(desk, tmp_path, f"{kind}-desktop-{name}")
    # The confirmation page of a bulk action.
    for view, shot in ((phone, "phone"), (desk, "desktop")):
        view.goto(panel.base + "/tasks?queue=payments", wait_until="load")
        view.click("#bulk summary")
        with view.expect_navigation():
            view.click("button[data-bulk=purge]")
        assert view.inner_text("#confirm-count") == "1"
        if view is phone:
            in_view(phone, "#confirm-bulk", PHONE["width"])
            assert phone.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        shoot(view, tmp_path, f"{kind}-{shot}-confirm")
    # The nav links and Log out work by tapping at 390 px.
    phone.goto(panel.base + "/", wait_until="load")
    for label in ("Schedules", "Pools"):
        with phone.expect_navigation():
            phone.click(f".nav a:has-text('{label}')")
        assert phone.url.endswith("/" + label.lower())
    phone.goto(panel.base + "/tasks?status=pending", wait_until="load")
    with phone.expect_navigation():
        phone.click(f"#task-{ids['pending'][0]} button[data-action=cancel]")
    assert backends.get_backend().get_task(ids["pending"][0])["status"] == "cancelled"
    with phone.expect_navigation():
        phone.click("#logout")
    assert "/login" in phone.url
    assert problems == [], "\n".join(problems)
