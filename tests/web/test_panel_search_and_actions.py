"""The panel's search, bulk actions, prefixes, time zones, schedule and queue actions,
per-queue charts and JSON API filters, through Starlette's TestClient, on both
backends (conftest's `db`). tests/web/test_panel_actions_browser.py drives the same in
Chromium.
"""

import os
import re
import sqlite3
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from liteq import backends, register_schedule, scheduler, task
from liteq.web import create_app, search
from liteq.web.security import CSRF_COOKIE

from support import pg_helpers
from support.task_table import put_task

ERR = "ValueError: card 4242 declined\nTraceback (most recent call last):\n  File \"pay.py\"\n"


@pytest.fixture
def seeded(db):
    """emails: 3 done, 1 failed (ERR), 1 pending due in an hour; reports: 1 running,
    2 pending (one with a 100%_off argument), 1 cancelled. Returns the ids."""
    store = backends.get_backend()
    ids = {}
    for i in range(3):
        ids[f"done{i}"] = put_task(store, "app.send_email",
                                   f'{{"args":["user{i}@example.com"],"kwargs":{{}}}}',
                                   queue="emails")
    ids["failed"] = put_task(store, "app.charge_card", '{"args":["ACME-77"],"kwargs":{}}',
                             queue="emails", max_retries=0)
    store.claim("w1", ["emails"], 10)
    t = time.time()
    store.record_outcomes("w1", done=[(ids[f"done{i}"], '"ok"', t - 125 + i, t - 120 + 2 * i)
                                      for i in range(3)],
                          failed=[(ids["failed"], ERR, t - 61, t - 60)])
    ids["later"] = put_task(store, "app.send_email", '{"args":["later@example.com"],"kwargs":{}}',
                            queue="emails", delay=3600)
    ids["running"] = put_task(store, "app.make_report", '{"args":[1],"kwargs":{}}',
                              queue="reports")
    assert [r["id"] for r in store.claim("w1", ["reports"], 1)] == [ids["running"]]
    ids["promo"] = put_task(store, "app.make_report",
                            '{"args":["100%_off"],"kwargs":{"who":"Zoë"}}', queue="reports")
    ids["plain"] = put_task(store, "app.make_report", '{"args":["100 off"],"kwargs":{}}',
                            queue="reports")
    ids["cancelled"] = put_task(store, "app.make_report", '{"args":[3],"kwargs":{}}',
                                queue="reports")
    assert store.cancel(ids["cancelled"])
    store.heartbeat("w1", "testhost", "emails,reports", 2, os.getpid(), time.time(),
                    started_at=time.time() - 30)
    return ids


def client(app=None, **options):
    return TestClient(app or create_app(**options), base_url="http://127.0.0.1")


def csrf_of(c, page="/"):
    c.get(page, headers={"accept": "text/html"})
    return c.cookies.get(CSRF_COOKIE)


def listed(html):
    """The task ids a list page shows, in order."""
    return [int(i) for i in re.findall(r'<tr id="task-(\d+)"', html)]


def status_of(task_id):
    row = backends.get_backend().get_task(task_id)
    return None if row is None else row["status"]


# ---- search ------------------------------------------------------------------------

def test_search_by_id_name_arguments_and_error(seeded):
    ids = seeded
    with client() as c:
        # An id finds that task first (pinned), whatever else matches the digits.
        assert listed(c.get(f"/tasks?q=%23{ids['failed']}").text) == [ids["failed"]]
        assert listed(c.get(f"/tasks?q={ids['later']}").text)[0] == ids["later"]
        # A part of the name, in any case.
        assert set(listed(c.get("/tasks?q=CHARGE_c").text)) == {ids["failed"]}
        assert set(listed(c.get("/tasks?q=make_rep").text)) == {
            ids["running"], ids["promo"], ids["plain"], ids["cancelled"]}
        # Argument text (the call's JSON).
        assert set(listed(c.get("/tasks?q=user1@example").text)) == {ids["done1"]}
        assert set(listed(c.get("/tasks?q=acme-77").text)) == {ids["failed"]}
        # Error text.
        assert set(listed(c.get("/tasks?q=card+4242+declined").text)) == {ids["failed"]}
        # % and _ are themselves, not wildcards.
        assert set(listed(c.get("/tasks?q=100%25_off").text)) == {ids["promo"]}
        # With the other filters.
        assert set(listed(c.get("/tasks?q=example.com&status=pending").text)) == {ids["later"]}
        assert listed(c.get("/tasks?q=example.com&queue=reports").text) == []
        assert "every task searched" in c.get("/tasks?q=example").text
        none = c.get("/tasks?q=no-such-text-anywhere").text
        assert listed(none) == [] and "No tasks match these filters" in none


def test_search_reads_slices_and_goes_on_below(seeded, monkeypatch):
    """With slices of 2 ids and no time budget, a search stops at one slice and
    offers "Search older", which goes on below; together they find everything."""
    ids = seeded
    monkeypatch.setattr(search, "SLICE", 2)
    monkeypatch.setattr(search, "BUDGET", 0.0)
    expected = {ids["running"], ids["promo"], ids["plain"], ids["cancelled"]}
    found, url, pages = [], "/tasks?q=make_report", 0
    with client() as c:
        while url:
            pages += 1
            assert pages < 20
            page = c.get(url).text
            found += listed(page)
            older = re.search(r'id="search-older" href="([^"]+)"', page)
            url = older.group(1).replace("&amp;", "&") if older else None
    assert sorted(found, reverse=True) == found  # newest first, no repeats
    assert set(found) == expected and pages > 2


def test_search_filters_of_the_json_api(seeded):
    ids = seeded
    with client() as c:
        got = c.get("/api/tasks?q=declined").json()
        assert [t["id"] for t in got] == [ids["failed"]]
        assert got[0]["error"].startswith("ValueError: card 4242")


# ---- JSON API ---------------------------------------------------------------------

def test_api_tasks_honours_status_queue_name_page_and_limit(seeded):
    ids = seeded
    with client() as c:
        failed = c.get("/api/tasks?status=failed").json()
        assert [t["id"] for t in failed] == [ids["failed"]]
        reports = c.get("/api/tasks?queue=reports").json()
        assert {t["queue"] for t in reports} == {"reports"} and len(reports) == 4
        first = c.get("/api/tasks?queue=reports&limit=3").json()
        second = c.get("/api/tasks?queue=reports&limit=3&page=2").json()
        assert len(first) == 3 and len(second) == 1
        assert {t["id"] for t in first + second} == {ids["running"], ids["promo"],
                                                      ids["plain"], ids["cancelled"]}
        named = c.get("/api/tasks?name=app.charge_card").json()
        assert [t["id"] for t in named] == [ids["failed"]]
        assert c.get("/api/tasks?status=bogus").status_code == 400
        assert c.get("/api/tasks?page=0").status_code == 400
        assert [t["id"] for t in c.get("/api/failed-tasks?queue=emails").json()] == \
            [ids["failed"]]
        assert c.get("/api/failed-tasks?queue=reports").json() == []
        assert c.get("/api/failed-tasks?page=2").json() == []


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")


def test_api_times_are_iso_8601_with_an_offset_everywhere(seeded):
    with client() as c:
        workers = c.get("/api/workers").json()
        assert workers and all(ISO.match(w["last_heartbeat"]) for w in workers)
        assert all(ISO.match(w["started_at"]) for w in workers), workers
        overview = c.get("/api/overview").json()
        assert all(ISO.match(p["t"]) for p in overview["series"])
        for w in overview["workers"]:
            assert ISO.match(w["last_heartbeat"]) and ISO.match(w["started_at"])
        for t in c.get("/api/tasks").json():
            for key in ("run_at", "created_at"):
                assert ISO.match(t[key]), (key, t[key])
        one = c.get(f"/api/tasks/{seeded['failed']}").json()
        assert ISO.match(one["finished_at"]) and ISO.match(one["started_at"])


# ---- times and zones --------------------------------------------------------------

def test_times_name_their_zone_and_schedules_show_their_own(seeded, clean_registry):
    @task
    def morning_report():
        return None

    register_schedule(morning_report, "0 9 * * *", name="berlin-9am", tz="Europe/Berlin")
    with client(timezone="UTC") as c:
        page = c.get("/schedules").text
        row = page[page.index('data-schedule="berlin-9am"'):]
        row = row[:row.index("</tr>")]
        # 09:00 in Berlin, and the same moment in the panel's zone (UTC).
        assert re.search(r"09:00:00 CES?T", row), row
        assert re.search(r"0[78]:00:00 UTC", row), row
        assert "Europe/Berlin" in row
        tasks = c.get("/tasks").text
        # The delayed task shows when it is due, with the zone.
        later = tasks[tasks.index(f'id="task-{seeded["later"]}"'):]
        later = later[:later.index("</tr>")]
        due = datetime.fromtimestamp(backends.get_backend().get_task(seeded["later"])["run_at"],
                                     ZoneInfo("UTC"))
        assert "in 59m" in later or "in 1h" in later
        assert due.strftime("%Y-%m-%d %H:%M:%S UTC") in later
        assert f'datetime="{due.isoformat()}' in later.replace("+00:00", "+00:00")
        detail = c.get(f"/tasks/{seeded['later']}").text
        assert due.strftime("%H:%M:%S UTC") in detail
        assert "times in UTC" in c.get("/").text
    with client(timezone="Europe/Berlin") as c:
        assert re.search(r"\d\d:\d\d:\d\d CES?T", c.get(f"/tasks/{seeded['failed']}").text)


def test_a_bad_timezone_is_refused(db):
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        create_app(timezone="Mars/Base")


def test_claimed_but_not_started_is_not_shown_as_running(seeded, db):
    """A claim leaves started_at unset: the task shows as claimed until the daemon
    writes its child's start (mark_started), then as running."""
    def row_of(page):
        row = page[page.index(f'id="task-{seeded["running"]}"'):]
        return row[:row.index("</tr>")]
    with client() as c:
        row = row_of(c.get("/tasks?queue=reports").text)
        assert ">claimed<" in row and ">running<" not in row
        detail = c.get(f"/tasks/{seeded['running']}").text
        assert ">claimed<" in detail and "claimed, not started yet" in detail
        backends.get_backend().mark_started("w1", [(seeded["running"], time.time())])
        row = row_of(c.get("/tasks?queue=reports").text)
        assert 'badge-running">running' in row and ">claimed<" not in row


# ---- bulk actions --------------------------------------------------------------------

def _bulk(c, token, **fields):
    return c.post("/tasks/bulk", data={"csrf_token": token, **fields}, follow_redirects=False)


def test_bulk_actions_confirm_first_then_act_on_what_the_filter_matches(seeded):
    ids = seeded
    with client() as c:
        token = csrf_of(c, "/tasks")
        # The first POST only asks.
        ask = _bulk(c, token, action="cancel", queue="reports")
        assert ask.status_code == 200 and 'id="confirm-count">3<' in ask.text
        assert status_of(ids["promo"]) == "pending"
        done = _bulk(c, token, action="cancel", queue="reports", confirm="yes",
                     next="/tasks?queue=reports")
        assert done.status_code == 303 and done.headers["location"] == "/tasks?queue=reports"
        assert {status_of(ids[k]) for k in ("running", "promo", "plain")} == {"cancelled"}
        assert status_of(ids["later"]) == "pending"          # another queue
        assert "3 tasks cancelled." in c.get("/tasks").text
        # Retry what a search matches: only the failed and cancelled tasks it finds.
        ask = _bulk(c, token, action="retry", q="make_report")
        assert 'id="confirm-count">4<' in ask.text
        _bulk(c, token, action="retry", q="100", confirm="yes")
        assert status_of(ids["promo"]) == "pending" and status_of(ids["plain"]) == "pending"
        assert status_of(ids["running"]) == "cancelled"
        # Purge deletes finished tasks only.
        ask = _bulk(c, token, action="purge", queue="emails")
        assert 'id="confirm-count">4<' in ask.text            # 3 done + 1 failed
        _bulk(c, token, action="purge", queue="emails", status="done", confirm="yes")
        assert all(status_of(ids[f"done{i}"]) is None for i in range(3))
        assert status_of(ids["failed"]) == "failed" and status_of(ids["later"]) == "pending"
        # A status the action cannot change matches nothing.
        ask = _bulk(c, token, action="cancel", status="done")
        assert 'id="confirm-count">0<' in ask.text
        assert _bulk(c, token, action="explode").status_code == 400


def test_bulk_actions_need_the_csrf_token_and_this_origin(seeded):
    with client() as c:
        token = csrf_of(c, "/tasks")
        fields = {"action": "cancel", "confirm": "yes"}
        assert c.post("/tasks/bulk", data=fields).status_code == 403
        assert c.post("/tasks/bulk", data={**fields, "csrf_token": "x" * 43}).status_code == 403
        assert c.post("/tasks/bulk", data={**fields, "csrf_token": token},
                      headers={"origin": "http://evil.example"}).status_code == 403
        assert c.get("/tasks/bulk").status_code == 405
        assert status_of(seeded["promo"]) == "pending"
    with client(token="bulk-token") as c:
        token = csrf_of(c, "/login")
        assert c.post("/tasks/bulk", data={**fields, "csrf_token": token}).status_code == 401
        assert status_of(seeded["promo"]) == "pending"


def test_bulk_actions_go_in_batches(seeded, monkeypatch):
    from liteq.web import bulk
    monkeypatch.setattr(bulk, "BATCH", 1)
    store = backends.get_backend()
    extra = [put_task(store, "app.bulk_one", '{"args":[],"kwargs":{}}', queue="bulkq")
             for _ in range(5)]
    with client() as c:
        token = csrf_of(c, "/tasks")
        _bulk(c, token, action="cancel", queue="bulkq", confirm="yes")
    assert {status_of(i) for i in extra} == {"cancelled"}


# ---- schedules -----------------------------------------------------------------------

def test_schedule_disable_enable_and_run_now(db, clean_registry):
    @task(queue="nightly")
    def cleanup(kind):
        return kind

    register_schedule(cleanup, "0 3 * * *", "full", name="cleanup-3am")
    store = backends.get_backend()
    sid = store.get_schedule("cleanup-3am")["id"]
    with client() as c:
        token = csrf_of(c, "/schedules")
        assert 'data-action="disable"' in c.get("/schedules").text
        r = c.post(f"/schedules/{sid}/disable", data={"csrf_token": token, "next": "/schedules"},
                   follow_redirects=False)
        assert r.status_code == 303 and not store.get_schedule("cleanup-3am")["enabled"]
        assert 'data-action="enable"' in c.get("/schedules").text
        c.post(f"/schedules/{sid}/enable", data={"csrf_token": token})
        row = store.get_schedule("cleanup-3am")
        assert row["enabled"] and row["next_run"] is not None
        before = row["next_run"]
        r = c.post(f"/schedules/{sid}/run", data={"csrf_token": token},
                   headers={"accept": "application/json"})
        assert r.status_code == 200 and r.json()["ok"], r.text
        assert "due now" in r.json()["message"]
        # The scheduler (liteqd's; here this process's, which knows the task) fires it
        # with the task's own queue, and its next run is the one it had.
        made = [store.get_task(i) for i in scheduler.fire_due(store)]
        assert len(made) == 1 and made[0]["name"].endswith("cleanup")
        assert made[0]["queue"] == "nightly" and made[0]["status"] == "pending"
        assert '"full"' in made[0]["payload"]
        assert abs(store.get_schedule("cleanup-3am")["next_run"] - before) < 1e-3
        assert scheduler.fire_due(store) == []
        # A disabled schedule is not run.
        c.post(f"/schedules/{sid}/disable", data={"csrf_token": token})
        r = c.post(f"/schedules/{sid}/run", data={"csrf_token": token},
                   headers={"accept": "application/json"})
        assert r.status_code == 409 and "is disabled" in r.json()["message"]
        assert c.post(f"/schedules/{sid}/run", data={}).status_code == 403
        assert c.post("/schedules/999999/run", data={"csrf_token": token}).status_code == 404
        assert c.post(f"/schedules/{sid}/explode", data={"csrf_token": token}).status_code == 404


# ---- queues --------------------------------------------------------------------------

def test_pause_without_a_daemon_says_so(seeded):
    with client() as c:
        token = csrf_of(c)
        r = c.post("/queues/pause", data={"csrf_token": token, "queue": "emails"},
                   headers={"accept": "application/json"})
        assert r.status_code == 409 and "not running" in r.json()["message"]
        assert c.post("/queues/pause", data={"queue": "emails"}).status_code == 403


def test_per_queue_charts_of_throughput_and_run_time(seeded):
    with client() as c:
        page = c.get("/").text
    charts = page[page.index('id="queue-charts"'):]
    emails = charts[charts.index('data-queue="emails"'):]
    emails = emails[:emails.index('class="queue-chart"') if 'class="queue-chart"' in emails
                    else len(emails)]
    assert "4 finished" in emails                     # 3 done + 1 failed
    assert emails.count('class="bar bar-done"') >= 1 and 'class="bar bar-failed"' in emails
    assert 'class="bar bar-mean"' in emails and 'class="tick-max"' in emails
    # The run times: 5, 6 and 7 s done, 1 s failed; the longest is 7 s.
    assert "max 7.0 s" in emails
    assert 'data-queue="reports"' not in charts       # nothing finished there lately


# ---- prefixes --------------------------------------------------------------------------

def host_app(**options):
    """The panel mounted at /admin/queue in another Starlette app, as a user would."""
    return Starlette(routes=[Route("/", lambda r: PlainTextResponse("the host app")),
                             Mount("/admin/queue", app=create_app(**options))])


def test_mounted_under_a_prefix_links_forms_and_redirects_carry_it(seeded):
    with client(host_app()) as c:
        assert c.get("/").text == "the host app"
        for path in ("/", "/tasks", "/failed", "/schedules", "/pools",
                     f"/tasks/{seeded['failed']}"):
            page = c.get("/admin/queue" + path, headers={"accept": "text/html"})
            assert page.status_code == 200, path
            for url in re.findall(r'(?:href|src|action)="([^"]+)"', page.text):
                if url.startswith("/"):
                    assert url.startswith("/admin/queue/"), (path, url)
        assert c.get("/admin/queue/static/panel.css").status_code == 200
        assert c.get("/admin/queue/api/tasks?status=failed").json()[0]["id"] == seeded["failed"]
        token = c.cookies.get(CSRF_COOKIE)
        r = c.post(f"/admin/queue/tasks/{seeded['failed']}/retry",
                   data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == f"/admin/queue/tasks/{seeded['failed']}"
        assert status_of(seeded["failed"]) == "pending"
        fav = c.get("/admin/queue/favicon.ico", follow_redirects=False)
        assert fav.headers["location"] == "/admin/queue/static/favicon.svg"


def test_a_prefixed_panel_with_a_token_logs_in_under_its_prefix(seeded):
    with client(host_app(token="prefix-token")) as c:
        r = c.get("/admin/queue/tasks", headers={"accept": "text/html"}, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/admin/queue/login?next=%2Fadmin%2Fqueue%2Ftasks"
        r = c.get("/admin/queue/failed?token=prefix-token", headers={"accept": "text/html"},
                  follow_redirects=False)
        assert r.headers["location"] == "/admin/queue/failed"
        assert "Path=/admin/queue" in r.headers["set-cookie"]
        assert c.get("/admin/queue/failed", headers={"accept": "text/html"}).status_code == 200
        token = c.cookies.get(CSRF_COOKIE)
        out = c.post("/admin/queue/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.headers["location"] == "/admin/queue/login"


def test_the_task_page_lists_every_attempts_error_from_the_database(db):
    """A task that failed, was retried, and failed again shows both errors, oldest
    first, read from the queue's own record of attempts (no stand-in)."""
    store = backends.get_backend()
    task_id = put_task(store, "app.flaky", '{"args":[],"kwargs":{}}', max_retries=1)
    t = time.time()
    assert [r["id"] for r in store.claim("w1", ["default"], 1)] == [task_id]
    store.record_outcomes("w1", retry=[(task_id, "ValueError: first try", t - 5, 0.0)])
    assert [r["id"] for r in store.claim("w1", ["default"], 1)] == [task_id]
    store.record_outcomes("w1", failed=[(task_id, "KeyError: second try", t - 2, t - 1)])
    with client() as c:
        page = c.get(f"/tasks/{task_id}").text
    assert "Errors of every attempt" in page
    assert page.index("ValueError: first try") < page.index("KeyError: second try")
    assert "Attempt 1" in page and "Attempt 2" in page
