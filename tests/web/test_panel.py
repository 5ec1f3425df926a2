"""The monitor panel (liteq.web) and /metrics, through Starlette's TestClient.

Every test runs against a real database on each backend (conftest's `db`). The last
one starts a real liteqd and scales its pool from the panel.
"""

import html
import os
import re
import signal
import subprocess
import textwrap
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from liteq import control, register_schedule, backends, task
from liteq.launcher import start_daemon
from liteq.web import create_app
from liteq.web.security import CSRF_COOKIE, LOOPBACK_NAMES
from support.task_table import put_task

from support.daemon_helpers import PYTHON
from support.monitor import Monitor


ERROR_TEXT = "ValueError: boom\nTraceback (most recent call last):\n  File \"app.py\", line 3\n"


@pytest.fixture
def tasks(db):
    """Known content: emails 2 done, 1 failed, 1 pending; reports 1 running,
    1 pending, 1 cancelled; a heartbeat row for worker w1. Returns the ids."""
    store = backends.get_backend()
    ids = {}
    ids["e_done1"] = put_task(store, "send_email", '{"args":["a@x.org","Hi"],"kwargs":{}}',
                                   queue="emails")
    ids["e_done2"] = put_task(store, "send_email", '{"args":["b@x.org","Hi"],"kwargs":{}}',
                                   queue="emails")
    ids["e_failed"] = put_task(store, "send_email", '{"args":["c@x.org"],"kwargs":{"s":1}}',
                                    queue="emails", max_retries=0)
    claimed = store.claim("w1", ["emails"], 3)
    assert len(claimed) == 3
    t = time.time()
    store.record_outcomes("w1", done=[(ids["e_done1"], '{"sent": true}', t - 2, t - 1),
                                      (ids["e_done2"], '"ok"', t - 2, t - 1)],
                          failed=[(ids["e_failed"], ERROR_TEXT, t - 2, t - 1)])
    ids["e_pending"] = put_task(store, "send_email", '{"args":["d@x.org"],"kwargs":{}}',
                                     queue="emails")
    ids["r_running"] = put_task(store, "make_report", '{"args":[1],"kwargs":{}}', queue="reports")
    assert [r["id"] for r in store.claim("w1", ["reports"], 1)] == [ids["r_running"]]
    store.mark_started("w1", [(ids["r_running"], time.time())])  # a child started it
    ids["r_pending"] = put_task(store, "make_report", '{"args":[2],"kwargs":{}}', queue="reports",
                                     priority=5)
    ids["r_cancelled"] = put_task(store, "make_report", '{"args":[3],"kwargs":{}}',
                                       queue="reports")
    assert store.cancel(ids["r_cancelled"])
    store.heartbeat("w1", "testhost", "emails,reports", 2, os.getpid(), time.time())
    return ids


def client(**options):
    """A TestClient for a fresh panel on LITEQ_DB (lifespan runs; cookies persist)."""
    return TestClient(create_app(**options), base_url="http://127.0.0.1")


def csrf_of(c, page="/"):
    """Visit a page (which sets the CSRF cookie) and return the token from its form."""
    resp = c.get(page, headers={"accept": "text/html"})
    assert resp.status_code == 200, resp.text
    token = c.cookies.get(CSRF_COOKIE)
    assert token
    if 'name="csrf_token"' in resp.text:
        assert f'value="{token}"' in resp.text
    return token


def status_of(task_id):
    return backends.get_backend().get_task(task_id)["status"]


# ---- pages ------------------------------------------------------------------------

def test_every_page_renders(tasks, clean_registry):
    @task(queue="reports")
    def nightly(kind):
        return kind

    register_schedule(nightly, "*/5 * * * *", "full", name="nightly-full")
    with client() as c:
        home = c.get("/")
        assert home.status_code == 200
        assert "Overview" in home.text and "emails" in home.text and "reports" in home.text
        assert 'data-chart=' in home.text
        assert "testhost" in home.text  # the heartbeat row

        listing = c.get("/tasks")
        assert listing.status_code == 200
        for task_id in tasks.values():
            assert f'id="task-{task_id}"' in listing.text

        detail = c.get(f"/tasks/{tasks['e_failed']}")
        assert detail.status_code == 200
        assert "c@x.org" in detail.text and "&#34;s&#34;: 1" in detail.text
        assert "<pre class=\"code traceback\">ValueError: boom\nTraceback" in detail.text
        assert "1 of at most 1" in detail.text

        done = c.get(f"/tasks/{tasks['e_done1']}")
        assert "&#34;sent&#34;: true" in done.text

        failed = c.get("/failed")
        assert failed.status_code == 200
        assert f'id="task-{tasks["e_failed"]}"' in failed.text
        assert f'id="task-{tasks["e_done1"]}"' not in failed.text
        assert "ValueError: boom" in failed.text and "1 matching" in failed.text

        sched = c.get("/schedules")
        assert sched.status_code == 200
        assert "nightly-full" in sched.text and "*/5 * * * *" in sched.text
        assert "nightly(&#34;full&#34;)" in sched.text
        # The next run, with its zone.
        assert re.search(r"\d\d:\d\d:\d\d [A-Za-z0-9+:-]+</time> <span class=\"muted\">in ",
                         sched.text)

        assert c.get("/pools").status_code == 200
        assert c.get("/static/panel.css").status_code == 200
        assert c.get("/static/panel.js").status_code == 200
        assert c.get("/static/favicon.svg").status_code == 200


def test_pages_say_the_daemon_is_not_running(tasks):
    with client() as c:
        assert "daemon not running" in c.get("/").text
        assert "daemon not running" in c.get("/pools").text
        api = c.get("/api/overview").json()
        assert api["daemon_up"] is False and api["daemon_error"] == "not running"
        assert api["counts"]["totals"]["done"] == 2


def test_pages_carry_a_strict_content_security_policy(tasks):
    with client() as c:
        resp = c.get("/")
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["cache-control"] == "no-store"
        # Nothing is loaded from another host.
        assert not re.search(r'(src|href)="(https?:)?//', resp.text)


def test_a_missing_task_is_404(tasks):
    with client() as c:
        resp = c.get("/tasks/999999", headers={"accept": "text/html"})
        assert resp.status_code == 404
        assert "Task not found" in resp.text and "#999999" in resp.text
        assert c.get("/tasks/not-a-number").status_code == 404
        assert c.get("/api/tasks/999999").status_code == 404
        assert c.get("/no/such/page").status_code == 404
        api = c.get(f"/api/tasks/{tasks['e_failed']}").json()
        assert api["status"] == "failed" and api["args"] == ["c@x.org"]


@pytest.mark.parametrize("query", ["status=bogus", "page=x", "page=0", "limit=abc",
                                   "limit=100000", "page=1.5", "name=" + "x" * 300])
def test_a_bad_filter_is_400(tasks, query):
    with client() as c:
        resp = c.get(f"/tasks?{query}", headers={"accept": "text/html"})
        assert resp.status_code == 400, resp.text
        assert "Bad request" in resp.text
        # The failed list takes the same filters, except status (always failed).
        expected = 200 if query.startswith("status=") else 400
        assert c.get(f"/failed?{query}").status_code == expected


def test_filters_and_paging(tasks):
    with client() as c:
        done = c.get("/tasks?queue=emails&status=done").text
        assert f'id="task-{tasks["e_done1"]}"' in done and f'id="task-{tasks["e_done2"]}"' in done
        assert f'id="task-{tasks["e_pending"]}"' not in done
        by_name = c.get("/tasks?name=make_report").text
        assert f'id="task-{tasks["r_running"]}"' in by_name
        assert f'id="task-{tasks["e_done1"]}"' not in by_name
        page2 = c.get("/tasks?limit=2&page=2").text
        assert "page 2 of 4" in page2 and "7 tasks" in page2
        assert not re.search(r'id="task-\d', c.get("/tasks?status=failed&queue=nowhere").text)


@pytest.mark.sqlite_only
def test_an_unreadable_database_is_503_not_a_crash(tmp_path, db_path):
    """SQLite only: the panel's database is a file of garbage."""
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"this is not a database" * 100)
    with client(db=str(bad)) as c:
        page = c.get("/", headers={"accept": "text/html"})
        assert page.status_code == 503
        assert "not a usable SQLite database" in page.text
        assert c.get("/metrics").status_code == 503


# ---- actions and CSRF ------------------------------------------------------------

def test_retry_with_the_csrf_token_makes_a_failed_task_pending(tasks):
    with client() as c:
        token = csrf_of(c, "/failed")
        resp = c.post(f"/tasks/{tasks['e_failed']}/retry",
                      data={"csrf_token": token, "next": "/failed"}, follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"] == "/failed"
        assert status_of(tasks["e_failed"]) == "pending"
        assert backends.get_backend().get_task(tasks["e_failed"])["attempts"] == 0
        page = c.get("/failed")
        assert f"Task #{tasks['e_failed']} (send_email) is pending again." in page.text
        assert "is pending again" not in c.get("/failed").text  # the flash shows once


def test_a_post_without_a_valid_csrf_token_is_403(tasks):
    with client() as c:
        url = f"/tasks/{tasks['e_failed']}/retry"
        assert c.post(url, data={}).status_code == 403
        token = csrf_of(c)
        assert c.post(url, data={"csrf_token": "x" * 43}).status_code == 403
        # The right token, but sent from another site.
        assert c.post(url, data={"csrf_token": token},
                      headers={"origin": "http://evil.example"}).status_code == 403
        assert c.post(url, data={"csrf_token": token},
                      headers={"referer": "http://evil.example/page"}).status_code == 403
        assert c.post(url, data={"csrf_token": token},
                      headers={"origin": "null"}).status_code == 403
        assert status_of(tasks["e_failed"]) == "failed"
        # The same token from this origin works.
        ok = c.post(url, data={"csrf_token": token}, headers={"origin": "http://127.0.0.1"},
                    follow_redirects=False)
        assert ok.status_code == 303
        assert status_of(tasks["e_failed"]) == "pending"


def test_state_changing_routes_refuse_get(tasks):
    with client() as c:
        assert c.get(f"/tasks/{tasks['e_failed']}/retry").status_code == 405
        assert c.get(f"/tasks/{tasks['e_pending']}/cancel").status_code == 405
        assert c.get("/pools/scale").status_code == 405
        assert status_of(tasks["e_failed"]) == "failed"


def test_cancel_a_pending_task(tasks):
    with client() as c:
        token = csrf_of(c, "/tasks")
        resp = c.post(f"/tasks/{tasks['e_pending']}/cancel", data={"csrf_token": token},
                      headers={"accept": "application/json"})
        assert resp.status_code == 200 and resp.json()["ok"] is True
        assert status_of(tasks["e_pending"]) == "cancelled"
        # Only pending or running tasks can be cancelled.
        again = c.post(f"/tasks/{tasks['e_done1']}/cancel", data={"csrf_token": token},
                       headers={"accept": "application/json"})
        assert again.status_code == 409 and "only pending or running" in \
            again.json()["message"]
        assert status_of(tasks["e_done1"]) == "done"
        assert c.post("/tasks/999999/cancel", data={"csrf_token": token}).status_code == 404


def test_retry_all_matching_the_filter(tasks):
    store = backends.get_backend()
    other = put_task(store, "make_report", '{"args":[9],"kwargs":{}}', queue="reports")
    store.claim("w2", ["reports"], 5)  # claims the pending reports tasks too
    store.record_outcomes("w2", failed=[(other, "RuntimeError: x", 1.0, 2.0)])
    with client() as c:
        token = csrf_of(c, "/failed?queue=emails")
        assert "1 matching" in c.get("/failed?queue=emails").text
        resp = c.post("/failed/retry", data={"csrf_token": token, "queue": "emails",
                                             "next": "/failed?queue=emails"},
                      follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/failed?queue=emails"
        assert status_of(tasks["e_failed"]) == "pending"
        assert status_of(other) == "failed"  # another queue: untouched
        page = c.get("/failed?queue=emails").text
        assert "1 failed task with queue &#39;emails&#39; is pending again." in page


def test_redirects_stay_on_this_site(tasks):
    with client() as c:
        token = csrf_of(c)
        resp = c.post(f"/tasks/{tasks['e_failed']}/retry",
                      data={"csrf_token": token, "next": "//evil.example/x"},
                      follow_redirects=False)
        assert resp.headers["location"] == f"/tasks/{tasks['e_failed']}"


# ---- token -------------------------------------------------------------------------

def test_with_a_token_pages_and_actions_need_it(tasks):
    secret = "s3cret-token-value"
    with client(token=secret) as c:
        page = c.get("/tasks?status=failed", headers={"accept": "text/html"},
                     follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Ftasks%3Fstatus%3Dfailed"
        assert c.get("/api/overview").status_code == 401
        assert c.get("/metrics").status_code == 401
        # A POST with a valid CSRF token but no auth is refused.
        token = csrf_of(c, "/login")
        url = f"/tasks/{tasks['e_failed']}/retry"
        assert c.post(url, data={"csrf_token": token}).status_code == 401
        assert status_of(tasks["e_failed"]) == "failed"

        wrong = c.post("/login", data={"csrf_token": token, "token": "nope", "next": "/"})
        assert wrong.status_code == 401 and "not right" in wrong.text
        # The login form itself is CSRF-protected.
        assert c.post("/login", data={"token": secret}).status_code == 403
        ok = c.post("/login", data={"csrf_token": token, "token": secret,
                                    "next": "/tasks?status=failed"}, follow_redirects=False)
        assert ok.status_code == 303 and ok.headers["location"] == "/tasks?status=failed"
        assert secret not in ok.headers["set-cookie"]  # the cookie is an HMAC, not the token
        assert c.get("/tasks?status=failed").status_code == 200
        # Logged in, a POST still needs the CSRF token.
        assert c.post(url, data={}).status_code == 403
        assert c.post(url, data={"csrf_token": token}, follow_redirects=False).status_code == 303
        assert status_of(tasks["e_failed"]) == "pending"

        out = c.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.status_code == 303
        assert c.get("/api/overview").status_code == 401


def test_the_login_page_shows_nothing_about_the_deployment(tasks):
    shown = html.escape(backends.identity_of(os.environ["LITEQ_DB"]))
    secret_parts = [shown, os.path.basename(shown.rstrip("/"))]
    with client(token="a-login-page-token") as c:
        token = csrf_of(c, "/login")
        pages = [c.get("/login", headers={"accept": "text/html"}),
                 c.get("/login?next=%2Ftasks", headers={"accept": "text/html"}),
                 c.post("/login", data={"csrf_token": token, "token": "wrong", "next": "/"}),
                 c.get("/?token=wrong", headers={"accept": "text/html"})]
        for page in pages:
            for part in secret_parts:
                assert part not in page.text, (page.url, part)
        c.post("/login", data={"csrf_token": token, "token": "a-login-page-token", "next": "/"})
        assert shown in c.get("/", headers={"accept": "text/html"}).text


def test_the_bearer_header_works_for_scripts(tasks):
    secret = "another-token"
    with client(token=secret) as c:
        bearer = {"authorization": f"Bearer {secret}", "accept": "application/json"}
        assert c.get("/api/overview", headers=bearer).status_code == 200
        assert c.get("/metrics", headers=bearer).status_code == 200
        assert c.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        # No CSRF token needed: browsers never attach this header cross-site.
        resp = c.post(f"/tasks/{tasks['e_pending']}/cancel", headers=bearer)
        assert resp.status_code == 200 and resp.json()["ok"] is True
        assert status_of(tasks["e_pending"]) == "cancelled"
    with client(token=secret, public_metrics=True) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/api/overview").status_code == 401


def test_loopback_panels_refuse_foreign_host_names(tasks):
    app = create_app(allowed_hosts=LOOPBACK_NAMES)
    with TestClient(app, base_url="http://127.0.0.1:5151") as c:
        assert c.get("/").status_code == 200
        assert c.get("/", headers={"host": "localhost:5151"}).status_code == 200
        assert c.get("/", headers={"host": "[::1]:5151"}).status_code == 200
        # DNS rebinding: a page on evil.example that now resolves to 127.0.0.1.
        assert c.get("/", headers={"host": "evil.example:5151"}).status_code == 400


# ---- metrics ---------------------------------------------------------------------

def _families(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = fam
    return out


def _value(fam, suffix="", **labels):
    for s in fam.samples:
        if s.name == fam.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{fam.name}{suffix} {labels}")


def test_metrics_parse_and_match_the_database(tasks):
    with client() as c:
        resp = c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    fams = _families(resp.text)
    tasks_fam = fams["liteq_tasks"]
    assert tasks_fam.type == "gauge"
    expected = {("emails", "done"): 2, ("emails", "failed"): 1, ("emails", "pending"): 1,
                ("emails", "running"): 0, ("emails", "cancelled"): 0,
                ("reports", "running"): 1, ("reports", "pending"): 1,
                ("reports", "cancelled"): 1, ("reports", "done"): 0, ("reports", "failed"): 0}
    for (queue, status), n in expected.items():
        assert _value(tasks_fam, queue=queue, status=status) == n, (queue, status)

    assert fams["liteq_tasks_processed"].type == "counter"
    assert _value(fams["liteq_tasks_processed"], "_total", queue="emails") == 2
    assert _value(fams["liteq_tasks_processed"], "_total", queue="reports") == 0
    assert _value(fams["liteq_tasks_failed"], "_total", queue="emails") == 1
    assert "liteq_tasks_processed_total{" in resp.text

    age = fams["liteq_oldest_pending_age_seconds"]
    assert 0 <= _value(age, queue="emails") < 60
    assert 0 <= _value(age, queue="reports") < 60
    assert _value(fams["liteq_daemon_up"]) == 0
    assert "liteq_pool_children" not in fams  # absent while the daemon is down
    assert 0 <= _value(fams["liteq_worker_heartbeat_age_seconds"], host="testhost") < 60


def test_metrics_of_an_empty_database(db):
    with client() as c:
        fams = _families(c.get("/metrics").text)
    assert _value(fams["liteq_daemon_up"]) == 0
    assert fams["liteq_tasks"].samples == []


def test_the_collector_works_in_any_registry(tasks):
    from prometheus_client import CollectorRegistry, generate_latest
    from liteq.metrics import LiteQCollector
    registry = CollectorRegistry()
    registry.register(LiteQCollector())
    fams = _families(generate_latest(registry).decode())
    assert _value(fams["liteq_tasks"], queue="emails", status="done") == 2


# ---- the command -----------------------------------------------------------------

def _header(headers, name):
    return [v for k, v in headers if k.lower() == name]


HTML = {"accept": "text/html"}


def test_liteq_monitor_makes_a_token_and_logs_in_through_the_printed_url(daemons, tasks):
    # With the default settings another local user scaled pools and retried tasks
    # through the panel. Now, without --token, a random token guards everything.
    m = Monitor(daemons).wait_listening()
    url = m.login_url()
    assert url and url.startswith(f"http://127.0.0.1:{m.port}/?token="), m.stderr()
    token = url.split("token=", 1)[1]
    assert len(token) >= 32 and "WARNING" not in m.stderr()

    # Without the token: pages go to the login form, everything else is 401.
    status, headers, _ = m.request("/tasks?status=failed", headers=HTML)
    assert status == 303
    assert _header(headers, "location") == ["/login?next=%2Ftasks%3Fstatus%3Dfailed"]
    for path in ("/api/overview", f"/api/tasks/{tasks['e_failed']}", "/metrics"):
        assert m.request(path)[0] == 401, path
    status, _, body = m.request(f"/tasks/{tasks['e_failed']}/retry", "POST",
                                headers={"content-type": "application/x-www-form-urlencoded"},
                                body="csrf_token=x")
    assert status == 401
    status, _, _ = m.request("/pools/scale", "POST", body="size=0",
                             headers={"content-type": "application/x-www-form-urlencoded"})
    assert status == 401
    assert status_of(tasks["e_failed"]) == "failed"
    # A wrong token in the URL leads to the login form, which says so.
    status, headers, _ = m.request("/?token=" + "0" * len(token), headers=HTML)
    assert status == 303 and _header(headers, "location")[0].startswith("/login?next=%2F")
    assert "not this panel" in m.request(_header(headers, "location")[0], headers=HTML)[2]

    # The printed URL: a redirect without the token, and a session cookie.
    status, headers, _ = m.request(url[len(f"http://127.0.0.1:{m.port}"):], headers=HTML)
    assert status == 303 and _header(headers, "location") == ["/"]
    session = next(c for c in _header(headers, "set-cookie") if c.startswith("liteq_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session and token not in session
    cookie = {"cookie": session.split(";", 1)[0]}
    assert m.request("/", headers={**HTML, **cookie})[0] == 200
    assert m.request("/api/overview", headers=cookie)[0] == 200
    assert m.request("/metrics", headers=cookie)[0] == 200
    # Scripts and Prometheus send the token as a Bearer header.
    bearer = {"authorization": f"Bearer {token}"}
    status, _, body = m.request("/metrics", headers=bearer)
    assert status == 200 and "liteq_tasks{" in body
    assert m.request("/metrics", headers={"authorization": "Bearer wrong"})[0] == 401
    # Other query parameters survive the login redirect; /login?token= goes to next.
    status, headers, _ = m.request(f"/tasks?status=failed&token={token}", headers=HTML)
    assert _header(headers, "location") == ["/tasks?status=failed"]
    status, headers, _ = m.request(f"/login?next=%2Fpools&token={token}", headers=HTML)
    assert _header(headers, "location") == ["/pools"]

    # A new start makes a new token; the old one and its sessions stop working.
    again = Monitor(daemons).wait_listening()
    assert again.login_url() != url
    assert again.request("/metrics", headers=bearer)[0] == 401
    assert again.request("/api/overview", headers=cookie)[0] == 401


def test_liteq_monitor_public_metrics(daemons, tasks):
    m = Monitor(daemons, "--public-metrics").wait_listening()
    assert m.login_url()
    status, _, body = m.request("/metrics")
    assert status == 200 and "liteq_tasks{" in body
    assert m.request("/api/overview")[0] == 401
    assert m.request("/", headers=HTML)[0] == 303


def test_liteq_monitor_with_a_given_token_does_not_print_it(daemons, tasks):
    m = Monitor(daemons, env={"LITEQ_MONITOR_TOKEN": "given-s3cret"}).wait_listening()
    assert m.login_url() is None and "given-s3cret" not in m.stderr()
    assert "token required" in m.stderr()
    assert m.request("/api/overview")[0] == 401
    assert m.request("/api/overview", headers={"authorization": "Bearer given-s3cret"})[0] == 200
    status, headers, _ = m.request("/?token=given-s3cret", headers=HTML)
    assert status == 303 and _header(headers, "location") == ["/"]
    assert any(c.startswith("liteq_session=") for c in _header(headers, "set-cookie"))


def test_liteq_monitor_no_token_is_open_on_loopback_with_a_warning(daemons, tasks):
    m = Monitor(daemons, "--no-token",
                env={"LITEQ_MONITOR_TOKEN": "ignored"}).wait_listening()
    err = m.stderr()
    assert "WARNING: --no-token" in err and "every user" in err
    assert m.login_url() is None
    assert m.request("/", headers=HTML)[0] == 200
    assert m.request("/api/overview")[0] == 200
    assert m.request("/metrics")[0] == 200


def test_liteq_monitor_refuses_no_token_off_loopback(daemons):
    res = daemons.run([PYTHON, "-m", "liteq.cli", "monitor", "--host", "0.0.0.0",
                       "--no-token"], timeout=60)
    assert res.returncode == 2
    assert "--no-token is only allowed on a loopback address" in res.stderr
    res = daemons.run([PYTHON, "-m", "liteq.cli", "monitor", "--token", "a", "--no-token"],
                      timeout=60)
    assert res.returncode == 2 and "not allowed with" in res.stderr


# ---- with a real daemon ---------------------------------------------------------

APP = textwrap.dedent("""
    from liteq import task

    @task
    def add(a, b):
        return a + b
""")


def _live_children():
    st = control.status(include_queues=False)
    pool = st["pools"][0]
    return len([c for c in pool["children"] if c["state"] in ("idle", "running")])


def test_pools_show_the_daemon_and_scale_it(db, tmp_path):
    app_file = tmp_path / "web_app_tasks.py"
    app_file.write_text(APP)
    daemon = start_daemon(str(app_file), concurrency=2, log_path=str(tmp_path / "liteqd.log"))
    try:
        st = control.status(include_queues=False)
        pids = [c["pid"] for c in st["pools"][0]["children"]]
        assert len(pids) == 2
        with client() as c:
            pools = c.get("/pools").text
            assert "daemon not running" not in pools
            assert f"pid {daemon.pid}" in pools
            assert "Pool default" in pools
            for pid in pids:
                assert f">{pid}<" in pools
            assert "2/2 children" in c.get("/").text

            fams = _families(c.get("/metrics").text)
            assert _value(fams["liteq_daemon_up"]) == 1
            assert _value(fams["liteq_pool_children"], pool="default") == 2
            assert _value(fams["liteq_pool_size"], pool="default") == 2

            token = csrf_of(c, "/pools")
            resp = c.post("/pools/scale", data={"csrf_token": token, "pool": "default",
                                                "size": "3", "next": "/pools"},
                          follow_redirects=False)
            assert resp.status_code == 303
            deadline = time.monotonic() + 15
            while _live_children() != 3:
                assert time.monotonic() < deadline, "the pool did not grow to 3 children"
                time.sleep(0.05)
            page = c.get("/pools").text
            assert "scaling to 3 children" in page
            assert "3/3 children" in page

            bad = c.post("/pools/scale", data={"csrf_token": token, "size": "-1"})
            assert bad.status_code == 400
            nopool = c.post("/pools/scale", data={"csrf_token": token, "pool": "nope",
                                                  "size": "1"},
                            headers={"accept": "application/json"})
            assert nopool.status_code == 409 and "nope" in nopool.json()["message"]
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_liteq_monitor_exits_0_on_a_stop_signal(daemons, sig):
    # systemd stops services with SIGTERM and counts any other exit than 0 (or 143
    # with SuccessExitStatus) as a failure; uvicorn re-raised the signal after its
    # graceful shutdown, so the process died with 143.
    import socket
    import urllib.error
    import urllib.request

    from support.daemon_helpers import LITEQCTL
    from support.processes import wait_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    liteq_cmd = os.path.join(os.path.dirname(LITEQCTL), "liteq")
    proc = daemons.popen([liteq_cmd, "monitor", "--port", str(port), "--db", daemons.db],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def serving():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # an answer (401: the panel wants its token): it serves
        except OSError:
            assert proc.poll() is None, proc.communicate()
            return False
    wait_for(serving, 20, message="liteq monitor never answered")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, (proc.returncode, err)
    assert "Traceback" not in err, err
