"""What tasks write (print, stderr, subprocesses, `logging`) reaches the daemon's log as
JSON events attributed to the task, bounded in size and rate; task.failed carries the
traceback. Real daemons on both backends, their stdout piped as under `liteqd | cat`.
"""

import json
import os
import shutil
from collections import Counter, defaultdict

import psutil
import pytest

from support import APPS
from support.daemon_helpers import FAST_ARGS, PYTHON, load_app_module
from support.processes import wait_for
from support.task_table import status_counts, wait_statuses
from liteqd.task_output import CUT_MARKER, MAX_LINE

OUTPUT_APP = os.path.join(APPS, "output_app.py")


def start_piped(ds, *args):
    """`liteqd --app output_app.py ... | cat`: the daemon's stdout is a pipe."""
    cmd = ["sh", "-c", '"$@" | cat', "sh", PYTHON, "-m", "liteqd.cli", "--app", OUTPUT_APP,
           *FAST_ARGS, *[str(a) for a in args]]
    return ds.start(cmd=cmd)


def all_json(d):
    """Every complete line of the daemon's stdout, parsed; fails on the first that is not
    a JSON object."""
    events = []
    for number, line in enumerate(d.log_lines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} of the daemon's stdout is not JSON: "
                                 f"{line[:300]!r}") from None
        assert isinstance(event, dict) and "event" in event, line[:300]
        events.append(event)
    return events


def wait_succeeded(d, ids, timeout=60):
    """Wait until the log holds task.succeeded for every id (outputs come before it)."""
    wanted = set(ids)
    wait_for(lambda: wanted <= {e["task_id"] for e in d.events("task.succeeded")}, timeout,
             lambda: f"not all of {sorted(wanted)[:10]}... succeeded\n{d.dump()}")


@pytest.mark.timeout(400)
def test_print_storm_leaves_every_stdout_line_json(daemons):
    app = load_app_module(OUTPUT_APP)
    d = start_piped(daemons, "--concurrency", 2)
    quick = app.quick.map(range(1500))
    chatty = app.chatty.map([5000] * 20)
    quick += app.quick.map(range(1500))
    wait_statuses(daemons.db, quick + chatty, ("done",), timeout=300, dump=d.dump)
    wait_succeeded(d, chatty)

    events = all_json(d)
    logged, dropped = Counter(), Counter()
    for e in events:
        if e["event"] == "task.output":
            assert e["stream"] in ("stdout", "stderr"), e
            assert e["name"] == "chatty" and e["text"].startswith(f"chatty {e['task_id']} "), \
                f"a line attributed to the wrong task: {e}"
            logged[e["task_id"]] += 1
        elif e["event"] == "task.output_dropped":
            assert e["name"] == "chatty", e
            dropped[e["task_id"]] += e["dropped_lines"]
        elif e["event"] == "child.output":
            raise AssertionError(f"output without its task: {e}")
    # 5,000 printed lines, one on stderr, one from a subprocess, one without a newline:
    # each is logged or counted as dropped, exactly once.
    assert {i: logged[i] + dropped[i] for i in chatty} == {i: 5003 for i in chatty}
    assert sum(logged.values()) > 0


def test_logging_records_become_events_at_their_level(daemons):
    app = load_app_module(OUTPUT_APP)
    d = start_piped(daemons)
    task_id = app.logs_records.delay()
    wait_statuses(daemons.db, [task_id], ("done",), dump=d.dump)
    wait_succeeded(d, [task_id])
    records = [e for e in all_json(d) if e["event"] == "task.log"]
    mine = [e for e in records if e.get("task_id") == task_id]
    assert mine == records, records
    by_message = {e["message"]: e for e in mine}
    info = by_message[f"info from {task_id}"]
    warning = by_message[f"warning from {task_id}"]
    error = by_message[f"error from {task_id}"]
    assert (info["level"], warning["level"], error["level"]) == ("info", "warning", "error")
    for e in (info, warning, error):
        assert e["logger"] == "output_app.tasks" and e["name"] == "logs_records", e
    assert "KeyError: 'missing'" in error["exception"], error
    assert "Traceback (most recent call last)" in error["exception"], error
    warned = [e for e in mine if e["logger"] == "py.warnings"]
    assert len(warned) == 1 and warned[0]["level"] == "warning", mine
    assert f"deprecated in {task_id}" in warned[0]["message"]


def test_a_very_long_line_is_cut_with_a_marker(daemons):
    app = load_app_module(OUTPUT_APP)
    d = start_piped(daemons)
    task_id = app.long_line.delay(MAX_LINE * 6 + 123)
    wait_statuses(daemons.db, [task_id], ("done",), dump=d.dump)
    wait_succeeded(d, [task_id])
    events = all_json(d)
    lines = [e for e in events if e["event"] == "task.output" and e["task_id"] == task_id]
    assert len(lines) == 2, lines
    cut, after = lines
    assert cut["cut"] is True and cut["text"] == "L" * MAX_LINE + CUT_MARKER
    assert after["text"] == "after the long line" and "cut" not in after
    reports = [e for e in events if e["event"] == "task.output_dropped"]
    assert [(e["task_id"], e["cut_lines"]) for e in reports] == [(task_id, 1)], reports


def test_a_flood_is_bounded_and_does_not_stall_other_tasks(daemons):
    app = load_app_module(OUTPUT_APP)
    # The flood has a pool of its own, so that no quick task waits behind it in its child.
    d = start_piped(daemons, "--concurrency", 1, "--pool", "flood:flood:1")
    supervisor = psutil.Process(int(d.events("daemon.ready")[0]["pid"]))
    baseline = supervisor.memory_info().rss
    flag = daemons.path("flood.stop")
    flood = app.flood.delay(100, flag)
    d.wait_event("task.started", task_id=flood)
    peak = [baseline]

    def sample():
        peak[0] = max(peak[0], supervisor.memory_info().rss)

    def all_done(ids):
        sample()
        return status_counts(daemons.db, ids).get("done", 0) == len(ids)

    # The flooding task writes until the flag exists: these finish while it writes.
    quick = app.quick.map(range(300))
    wait_for(lambda: all_done(quick), 120, d.dump, interval=0.1)
    assert status_counts(daemons.db, [flood]) == {"running": 1}
    open(flag, "w").close()
    wait_for(lambda: all_done([flood]), 300, d.dump, interval=0.1)
    wait_succeeded(d, [flood], timeout=60)
    sample()
    events = all_json(d)
    reports = [e for e in events if e["event"] == "task.output_dropped"
               and e.get("task_id") == flood]
    assert reports, "no task.output_dropped for the flood"
    assert sum(e["dropped_bytes"] for e in reports) > 90_000_000, reports
    logged = [e for e in events if e["event"] == "task.output" and e.get("task_id") == flood]
    assert all(len(e["text"]) <= MAX_LINE + len(CUT_MARKER) for e in logged)
    # The 8 MB line without a newline (on stderr) never sat in the supervisor's memory.
    assert peak[0] - baseline < 40 * 1024 * 1024, (baseline, peak[0])


def test_task_failed_and_retrying_carry_the_traceback(daemons):
    app = load_app_module(OUTPUT_APP)
    d = start_piped(daemons)
    task_id = app.broken.delay("purpose")
    wait_statuses(daemons.db, [task_id], ("failed",), dump=d.dump)
    failed = d.wait_event("task.failed", task_id=task_id)
    retrying = d.wait_event("task.retrying", task_id=task_id)
    for e in (failed, retrying):
        assert e["error"] == "RuntimeError: broken on purpose", e
        assert e["traceback"].startswith("Traceback (most recent call last)"), e
        assert "in _deep" in e["traceback"] and "in broken" in e["traceback"], e
        assert e["traceback"].rstrip().endswith("RuntimeError: broken on purpose"), e
    all_json(d)


def test_each_line_reaches_the_log_once_attributed_to_its_task(daemons):
    app = load_app_module(OUTPUT_APP)
    d = start_piped(daemons, "--concurrency", 1)
    ids = [app.chatty.delay(3) for _ in range(5)]
    wait_statuses(daemons.db, ids, ("done",), dump=d.dump)
    wait_succeeded(d, ids)
    texts = defaultdict(list)
    for e in all_json(d):
        if e["event"] == "task.output":
            texts[e["task_id"]].append((e["stream"], e["text"]))
    for i in ids:
        assert sorted(texts[i]) == sorted(
            [("stdout", f"chatty {i} line {n}") for n in range(3)] +
            [("stderr", f"chatty {i} on stderr"), ("stdout", f"chatty {i} from a subprocess"),
             ("stdout", f"chatty {i} last")]), texts[i]


JOURNALD = "/lib/systemd/systemd-journald"

# Runs in a private mount namespace: a journald of its own on tmpfs (the host's journal is
# never touched), liteqd with its stdout and stderr connected to it as systemd connects a
# service's (systemd-cat, plus the JOURNAL_STREAM variable systemd sets), until the file
# $STOP exists; then the journal is exported to $OUT.json and $OUT.cat.
JOURNAL_SCRIPT = r"""
set -e
mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal
"$JOURNALD" &
jpid=$!
trap 'kill $jpid 2>/dev/null || true' EXIT
n=0; until [ -S /run/systemd/journal/stdout ]; do n=$((n+1)); [ $n -lt 200 ]; sleep 0.05; done
systemd-cat -t liteqd-test \
    sh -c 'export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/$$/fd/1); exec "$@"' \
    sh "$@" &
dpid=$!
until [ -e "$STOP" ]; do sleep 0.05; done
kill -TERM $dpid   # systemd-cat and sh exec: this is liteqd
wait $dpid || true
n=0
until journalctl -D /run/log/journal -t liteqd-test -o cat --no-pager | grep -q daemon.stopped; do
    n=$((n+1)); [ $n -lt 200 ]; sleep 0.05
done
journalctl -D /run/log/journal -t liteqd-test -o json --no-pager > "$OUT.json"
journalctl -D /run/log/journal -t liteqd-test -o cat --no-pager > "$OUT.cat"
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(JOURNALD)
                    or not shutil.which("systemd-cat") or not shutil.which("unshare"),
                    reason="needs root, systemd-journald, systemd-cat and unshare")
def test_journald_files_each_event_at_its_level_and_keeps_the_json(daemons):
    app = load_app_module(OUTPUT_APP)
    ids = [app.logs_records.delay(), app.broken.delay("purpose"), app.chatty.delay(2)]
    out, stop = daemons.path("journal"), daemons.path("journal.stop")
    script = daemons.path("journal.sh")
    with open(script, "w") as f:
        f.write(JOURNAL_SCRIPT)
    proc = daemons.popen(["unshare", "--mount", "--propagation", "private", "sh", script,
                          PYTHON, "-m", "liteqd.cli", "--app", OUTPUT_APP, *FAST_ARGS],
                         env={"JOURNALD": JOURNALD, "STOP": stop, "OUT": out})
    wait_statuses(daemons.db, ids, ("done", "failed"), timeout=60)
    open(stop, "w").close()
    assert proc.wait(timeout=60) == 0
    with open(out + ".cat") as f:
        cat = [json.loads(line) for line in f.read().splitlines()]  # `-o cat | jq .` works
    with open(out + ".json") as f:
        entries = [json.loads(line) for line in f.read().splitlines()]
    priority = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}
    seen = Counter()
    for entry in entries:
        event = json.loads(entry["MESSAGE"])
        assert entry["PRIORITY"] == priority[event["level"]], entry
        seen[event["event"], event["level"]] += 1
    assert len(cat) == len(entries)
    for wanted in [("task.log", "info"), ("task.log", "warning"), ("task.log", "error"),
                   ("task.failed", "error"), ("task.retrying", "warning"),
                   ("task.output", "info"), ("task.output", "warning"),
                   ("daemon.stopped", "info")]:
        assert seen[wanted], (wanted, seen)
