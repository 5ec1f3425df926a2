"""What tasks write to stdout and stderr, and what they log, reaches the daemon's log as
JSON events with the task's id: never raw text among the daemon's records.

On each backend, with real daemons whose stdout is a file (as under systemd or a pipe).
"""

import json
import os

import psutil

from daemon_helpers import (daemons, load_app_module, wait_all, wait_for,  # noqa: F401
                            wait_status)
from liteqd import task_output

APP = os.path.join(os.path.dirname(__file__), "apps", "output_app.py")


def _parsed(d):
    """Every line of the daemon's stdout, parsed; fails on a line that is not JSON."""
    out = []
    for i, line in enumerate(d.log_lines()):
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {i + 1} of the daemon's stdout is not JSON: "
                                 f"{line[:300]!r}") from None
    return out


def test_a_print_storm_beside_quick_tasks_leaves_every_line_json(daemons):
    app = load_app_module(APP)
    d = daemons.start("--concurrency", "2", app=APP)
    noisy = [app.chatty.delay(2000) for _ in range(10)]
    quick = [app.quick.delay(i) for i in range(1000)]
    wait_all(noisy + quick, timeout=120, daemons=daemons)
    d.stop()
    events = _parsed(d)
    output = [e for e in events if e["event"] == "task.output"]
    by_task = {}
    for e in output:
        by_task.setdefault(e["task_id"], []).append(e)
    for tid in noisy:
        lines = by_task.get(tid, [])
        assert len(lines) == 2000, (tid, len(lines))
        assert {e["name"] for e in lines} == {"chatty"}
        assert {e["stream"] for e in lines} == {"stdout", "stderr"}
        assert sorted(int(e["line"].split()[2]) for e in lines) == list(range(2000))
    assert not set(by_task) - set(noisy), "output credited to a task that printed nothing"
    assert not [e for e in events if e["event"] == "task.output_dropped"]


def test_output_without_a_newline_and_from_a_subprocess_is_credited_to_its_task(daemons):
    app = load_app_module(APP)
    d = daemons.start("--concurrency", "1", app=APP)
    said = app.say.delay("no newline here")
    echoed = app.shell_echo.delay("from a subprocess")
    after = app.quick.delay(1)
    wait_all([said, echoed, after], daemons=daemons)
    d.stop()
    lines = {(e["task_id"], e["line"]) for e in _parsed(d) if e["event"] == "task.output"}
    assert (said, "no newline here") in lines
    assert (echoed, "from a subprocess") in lines
    assert not [t for t, _ in lines if t == after]


def test_logging_records_keep_their_level_and_task(daemons):
    app = load_app_module(APP)
    d = daemons.start("--concurrency", "1", app=APP)
    tid = app.logs_things.delay()
    wait_status(tid, daemons=daemons)
    d.stop()
    records = [e for e in _parsed(d) if e["event"] == "task.log"]
    got = {(e["level"], e["message"]) for e in records}
    assert ("info", "info from a task") in got
    assert ("warning", "careful: warned") in got
    assert ("error", "it broke") in got
    assert all(e["task_id"] == tid and e["name"] == "logs_things" for e in records)
    assert all(e["logger"] == "output_app" for e in records)
    broke = next(e for e in records if e["message"] == "it broke")
    assert "ZeroDivisionError" in broke["traceback"]


def test_a_very_long_line_is_cut_with_a_marker(daemons):
    app = load_app_module(APP)
    d = daemons.start("--concurrency", "1", app=APP)
    tid = app.long_line.delay(1_000_000)
    wait_status(tid, daemons=daemons)
    d.stop()
    lines = [e["line"] for e in _parsed(d) if e["event"] == "task.output" and e["task_id"] == tid]
    assert len(lines) == 2, [len(x) for x in lines]
    assert lines[0].endswith(task_output.CUT_MARK)
    assert len(lines[0]) == task_output.LINE_LIMIT + len(task_output.CUT_MARK)
    assert lines[1] == "after the long line"


def test_a_flood_is_dropped_over_the_budget_and_counted_while_others_go_on(daemons):
    app = load_app_module(APP)
    d = daemons.start("--concurrency", "2", app=APP)
    big = app.flood.delay(100)
    quick = [app.quick.delay(i) for i in range(200)]
    wait_all(quick, timeout=60, daemons=daemons)
    rss = []

    def flood_done():
        rss.append(psutil.Process(d.pid).memory_info().rss)
        return _finished(big)
    wait_for(flood_done, 120, lambda: d.dump(20), interval=0.2)
    d.stop()
    events = _parsed(d)
    dropped = [e for e in events if e["event"] == "task.output_dropped"]
    assert dropped and all(e["task_id"] == big for e in dropped)
    shown = [e for e in events if e["event"] == "task.output" and e["task_id"] == big]
    assert shown and all(e["line"] == "flood " + "y" * 57 for e in shown)
    # Every line of the 100 MiB is either logged or counted as dropped.
    lines_total = 100 * 16384
    assert len(shown) + sum(e["lines"] for e in dropped) == lines_total
    assert max(rss) < 200 * 2 ** 20, f"supervisor grew to {max(rss) / 2 ** 20:.0f} MiB"


def _finished(tid):
    from liteq import get_task_status
    st = get_task_status(tid)
    return st and st["status"] in ("done", "failed")


def test_task_failed_carries_the_traceback(daemons):
    app = load_app_module(APP)
    d = daemons.start("--concurrency", "1", app=APP)
    tid = app.fails.delay()
    wait_status(tid, daemons=daemons)
    d.stop()
    failed = [e for e in _parsed(d) if e["event"] == "task.failed" and e["task_id"] == tid]
    assert failed and failed[0]["error"] == "ValueError: bad value in a task"
    assert "Traceback (most recent call last)" in failed[0]["traceback"]
    assert 'raise ValueError("bad value in a task")' in failed[0]["traceback"]


def test_under_journald_each_line_carries_its_syslog_priority(daemons):
    """journald reads a "<N>" prefix off each line as the entry's priority (and removes
    it); stdout is the journal stream when $JOURNAL_STREAM names its device and inode."""
    app = load_app_module(APP)
    d = daemons.make("--concurrency", "1", app=APP)
    # The daemon's stdout is the log file Daemon.start() opens (truncating it, so the
    # inode stays): name it as systemd would.
    open(d.log_path, "wb").close()
    st = os.stat(d.log_path)
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    d.start()
    tid = app.logs_things.delay()
    wait_for(lambda: any(line.startswith("<3>") for line in d.log_lines()), 30,
             lambda: d.dump(30))
    wait_status(tid, daemons=daemons)
    d.stop()
    lines = d.log_lines()
    assert lines and all(line[:1] == "<" and line[2:4] == ">{" for line in lines), lines[:3]
    for line in lines:
        prio, record = int(line[1]), json.loads(line[3:])
        assert prio == {"debug": 7, "info": 6, "warning": 4, "error": 3,
                        "critical": 2}[record["level"]], line
    assert {json.loads(line[3:])["message"] for line in lines if line.startswith("<4>")
            and "message" in line} >= {"careful: warned"}
