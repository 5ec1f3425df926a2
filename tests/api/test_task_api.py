"""The application API: @task, .delay/.schedule/.apply_async/.map/.starmap, status, waiting.

Every test that writes a task runs on each backend (conftest's `db`) and reads rows back
through a fresh backend (task_table.task_row), as another process would."""

import asyncio
import calendar
import json
import multiprocessing
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import liteq
from liteq import backends
from liteq.core import TASK_REGISTRY, Task, task

from support.task_table import count_tasks, task_row

FORK = multiprocessing.get_context("fork")

STATUS_KEYS = {"id", "name", "queue", "status", "priority", "attempts", "max_retries",
               "worker_id", "run_at", "created_at", "started_at", "finished_at", "result",
               "error", "args", "kwargs"}


def _epoch(iso):
    return datetime.fromisoformat(iso).timestamp()


@pytest.fixture
def echo(db, clean_registry):
    @task
    def echo(*args, **kwargs):
        return [args, kwargs]
    return echo


# ---- the decorator --------------------------------------------------------------


def test_bare_decorator_and_defaults(db, clean_registry):
    @task
    def add(a, b):
        return a + b

    assert isinstance(add, Task)
    assert add.name == "add" and add.queue == "default" and add.max_retries == 3
    assert add.timeout is None and add.priority == 0
    assert TASK_REGISTRY["add"] is add
    assert add(2, 3) == 5  # still directly callable
    assert add.__name__ == "add"

    tid = add.delay(2, 3)
    row = task_row(db, tid)
    assert (row["name"], row["queue"], row["max_retries"], row["priority"], row["status"],
            row["attempts"]) == ("add", "default", 3, 0, "pending", 0)


def test_decorator_with_options(db, clean_registry):
    @task(queue="reports", max_retries=5, name="custom_name", timeout=30, priority=4)
    def generate_report(report_id):
        return {"report_id": report_id}

    assert generate_report.name == "custom_name"
    assert TASK_REGISTRY["custom_name"] is generate_report
    assert "generate_report" not in TASK_REGISTRY
    assert generate_report(7) == {"report_id": 7}
    tid = generate_report.delay(report_id=123)
    row = task_row(db, tid)
    assert (row["name"], row["queue"], row["max_retries"], row["timeout"], row["priority"]) == (
        "custom_name", "reports", 5, 30, 4)


def test_empty_parentheses_and_max_retries_zero(db, clean_registry):
    @task()
    def one_time_task():
        return "once"

    @task(max_retries=0)
    def no_retries():
        return None

    assert one_time_task.name == "one_time_task" and one_time_task() == "once"
    assert task_row(db, no_retries.delay())["max_retries"] == 0


def test_async_function_stays_a_coroutine_function(db, clean_registry):
    @task
    async def fetch(url):
        await asyncio.sleep(0)
        return url

    assert fetch.is_async
    assert asyncio.run(fetch("u")) == "u"
    assert isinstance(fetch.delay("u"), int)


@pytest.mark.parametrize("options,exc", [
    ({"max_retries": -1}, ValueError),
    ({"timeout": 0}, ValueError),
    ({"timeout": -5}, ValueError),
    ({"queue": ""}, ValueError),
    ({"queue": None}, ValueError),
    ({"max_retries": "3"}, TypeError),
    ({"retry_delay": -1}, ValueError),
])
def test_invalid_decorator_options_raise(clean_registry, options, exc):
    with pytest.raises(exc):
        @task(name="bad_options_task", **options)
        def f():
            pass
    assert "bad_options_task" not in TASK_REGISTRY


def test_positional_option_that_is_not_the_seeds_is_refused(clean_registry):
    # task("emails", 5) is liteq 0.2's positional form (queue, max_retries, ...);
    # anything else in first place is a mistake.
    with pytest.raises(TypeError, match="keyword"):
        task(5)


def test_two_functions_under_one_name_raise(clean_registry):
    @task(name="clash")
    def first():
        return 1

    with pytest.raises(ValueError, match="clash"):
        @task(name="clash")
        def second():
            return 2

    assert TASK_REGISTRY["clash"] is first


def test_reregistering_the_same_function_is_allowed(clean_registry):
    src = "from liteq import task\n@task(name='reloaded')\ndef job(x):\n    return x + 1\n"
    code = compile(src, "/app/tasks.py", "exec")
    ns1, ns2 = {}, {}
    exec(code, ns1)
    exec(code, ns2)  # the same file loaded again (run as __main__ and imported)
    assert ns1["job"].fn is not ns2["job"].fn
    assert TASK_REGISTRY["reloaded"] is ns2["job"]

    @task(name="twice")
    def twice():
        return 2
    assert task(name="twice")(twice.fn) is TASK_REGISTRY["twice"]

    # Same name, same file, but a different line: a different function.
    other = compile("\n" + src, "/app/tasks.py", "exec")
    with pytest.raises(ValueError, match="reloaded"):
        exec(other, {})


# ---- .delay and get_task_status -----------------------------------------------------


def test_delay_returns_increasing_int_ids(echo):
    ids = [echo.delay(i) for i in range(5)]
    assert all(isinstance(i, int) for i in ids)  # TaskHandles: ints
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_status_keys_and_values(db, echo):
    before = time.time()
    tid = echo.delay(1, 2, flag=True)
    after = time.time()
    status = liteq.get_task_status(tid)
    missing = STATUS_KEYS - set(status)
    assert not missing, f"missing keys {missing}; got {sorted(status)}"
    assert status["id"] == tid and status["name"] == "echo" and status["queue"] == "default"
    assert status["status"] == "pending" and status["attempts"] == 0
    assert status["max_retries"] == 3 and status["priority"] == 0
    assert status["worker_id"] is None and status["result"] is None and status["error"] is None
    assert status["started_at"] is None and status["finished_at"] is None
    assert before - 1 <= _epoch(status["created_at"]) <= after + 1
    assert before - 1 <= _epoch(status["run_at"]) <= after + 1


def test_args_and_kwargs_round_trip(echo):
    args = (1, "two", [3, [4]], {"5": 6}, None, True, 1.5, "привет", -(2 ** 62))
    kwargs = {"k": "v", "nested": {"a": [1, 2, {"b": None}]}, "empty": [], "ünï": "ok"}
    status = liteq.get_task_status(echo.delay(*args, **kwargs))
    assert status["args"] == list(args)
    assert status["kwargs"] == kwargs
    assert liteq.get_task_status(echo.delay())["args"] == []
    assert liteq.get_task_status(echo.delay())["kwargs"] == {}


def test_status_read_on_fresh_database_creates_schema(db):
    assert liteq.get_task_status(1) is None  # not "no such table"


def test_unknown_task_id_is_none(echo):
    echo.delay(1)
    assert liteq.get_task_status(999_999) is None
    assert liteq.get_task_status(0) is None


def test_result_is_decoded(db, echo):
    tid = echo.delay(1)
    store = backends.get_backend()
    [claimed] = store.claim("w", ["default"], 1)
    t = time.time()
    assert len(store.record_outcomes("w", done=[(tid, json.dumps({"sum": [1, 2]}), t, t)])) \
        == 1
    status = liteq.get_task_status(tid)
    assert status["status"] == "done" and status["result"] == {"sum": [1, 2]}
    assert status["worker_id"] == "w" and status["attempts"] == 1
    assert status["started_at"] is not None and status["finished_at"] is not None


# ---- .schedule ------------------------------------------------------------------


@pytest.fixture
def tokyo():
    """Run in UTC+9 so that naive local time and UTC differ."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "JST-9"
    time.tzset()
    try:
        assert time.timezone == -9 * 3600
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_schedule_with_naive_local_datetime(db, echo, tokyo):
    when = datetime(2030, 1, 1, 9, 0, 0)  # 09:00 in UTC+9 = 00:00 UTC
    tid = echo.schedule(when, "x")
    expected = calendar.timegm((2030, 1, 1, 0, 0, 0))
    assert task_row(db, tid)["run_at"] == pytest.approx(expected, abs=1e-3)
    status = liteq.get_task_status(tid)
    assert _epoch(status["run_at"]) == pytest.approx(expected, abs=1e-3)
    assert status["args"] == ["x"]


def test_schedule_with_aware_datetime(db, echo, tokyo):
    when = datetime(2030, 6, 1, 12, 30, 15, 500000, tzinfo=timezone.utc)
    tid = echo.schedule(when, k=1)
    assert task_row(db, tid)["run_at"] == pytest.approx(
        calendar.timegm((2030, 6, 1, 12, 30, 15)) + 0.5, abs=1e-3)
    assert liteq.get_task_status(tid)["kwargs"] == {"k": 1}
    other_zone = datetime(2030, 6, 1, 14, 30, 15, 500000, tzinfo=timezone(timedelta(hours=2)))
    assert task_row(db, echo.schedule(other_zone))["run_at"] == pytest.approx(
        task_row(db, tid)["run_at"], abs=1e-3)


@pytest.mark.parametrize("when,offset", [(timedelta(minutes=5), 300.0), (10, 10.0),
                                         (2.5, 2.5), (timedelta(0), 0.0)])
def test_schedule_with_timedelta_or_seconds(db, echo, when, offset):
    before = time.time()
    tid = echo.schedule(when, 1)
    after = time.time()
    run_at = task_row(db, tid)["run_at"]
    assert before + offset - 0.01 <= run_at <= after + offset + 0.01


def test_schedule_with_bad_when_writes_nothing(db, echo):
    echo.delay(0)
    n = count_tasks(db)
    for bad in (None, True):
        with pytest.raises(TypeError):
            echo.schedule(bad, 1)
    with pytest.raises(ValueError, match="'tomorrow' is not an ISO-8601"):
        echo.schedule("tomorrow", 1)
    assert count_tasks(db) == n


# ---- .apply_async ----------------------------------------------------------------


def test_apply_async_options_are_stored(db, echo):
    before = time.time()
    tid = echo.apply_async(args=(1, 2), kwargs={"a": 3}, priority=7, queue="urgent",
                           countdown=30, timeout=12.5, max_retries=0)
    after = time.time()
    row = task_row(db, tid)
    assert (row["priority"], row["queue"], row["timeout"], row["max_retries"]) == (
        7, "urgent", 12.5, 0)
    assert before + 30 - 0.01 <= row["run_at"] <= after + 30 + 0.01
    status = liteq.get_task_status(tid)
    assert status["args"] == [1, 2] and status["kwargs"] == {"a": 3}
    assert status["timeout"] == 12.5


def test_apply_async_eta(db, echo, tokyo):
    eta = datetime(2031, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    row = task_row(db, echo.apply_async(args=[1], eta=eta))
    assert row["run_at"] == pytest.approx(calendar.timegm((2031, 3, 4, 5, 6, 7)), abs=1e-3)
    naive = datetime(2031, 3, 4, 14, 6, 7)  # local UTC+9
    row = task_row(db, echo.apply_async(args=[1], eta=naive))
    assert row["run_at"] == pytest.approx(calendar.timegm((2031, 3, 4, 5, 6, 7)), abs=1e-3)
    # Defaults come from the decorator when not given per call.
    assert (row["queue"], row["priority"], row["max_retries"], row["timeout"]) == (
        "default", 0, 3, None)


def test_apply_async_refuses_bad_options_and_writes_nothing(db, echo):
    echo.delay(0)
    n = count_tasks(db)
    with pytest.raises(ValueError, match="eta|countdown"):
        echo.apply_async(args=[1], eta=datetime.now(), countdown=5)
    with pytest.raises(ValueError):
        echo.apply_async(args=[1], countdown=-1)
    with pytest.raises(ValueError):
        echo.apply_async(args=[1], timeout=0)
    with pytest.raises(ValueError):
        echo.apply_async(args=[1], max_retries=-2)
    with pytest.raises(TypeError):
        echo.apply_async(args="abc")
    with pytest.raises(TypeError):
        echo.apply_async(args=[1], kwargs=[("a", 1)])
    assert count_tasks(db) == n


# ---- arguments JSON cannot hold --------------------------------------------------


@pytest.mark.parametrize("call,label", [
    (lambda t: t.delay(object()), "positional argument 0"),
    (lambda t: t.delay(1, {1, 2}), "positional argument 1"),
    (lambda t: t.delay(1, 2, [3, float("nan")]), "positional argument 2"),
    (lambda t: t.delay(data=iter([b"bytes"])), "'data'"),  # bytes are kept; an iterator not
    (lambda t: t.delay(1, x=float("inf")), "'x'"),
    (lambda t: t.delay(1, ok=1, bad={"nested": object()}), "'bad'"),
    (lambda t: t.schedule(60, 1, {2}), "positional argument 1"),
    (lambda t: t.apply_async(args=[1, 2, 3, frozenset("x")]), "positional argument 3"),
    (lambda t: t.apply_async(args=[1], kwargs={"when": [datetime.now(), {3}]}), "'when'"),
])
def test_non_json_arguments_raise_type_error_and_write_nothing(db, echo, call, label):
    echo.delay("existing")
    n = count_tasks(db)
    with pytest.raises(TypeError) as info:
        call(echo)
    assert label in str(info.value), str(info.value)
    assert "echo" in str(info.value)
    assert count_tasks(db) == n


def test_non_string_keyword_keys_are_refused(db, echo):
    echo.delay("existing")
    n = count_tasks(db)
    with pytest.raises(TypeError, match="keyword 1"):
        echo.apply_async(args=[], kwargs={1: "a"})
    assert count_tasks(db) == n


# ---- .map / .starmap -------------------------------------------------------------


def test_map_enqueues_in_order_with_consecutive_ids(db, echo):
    first = echo.delay("before")
    items = [i * 3 for i in range(200)]
    ids = echo.map(items)
    assert ids == list(range(ids[0], ids[0] + 200))
    assert ids[0] == first + 1
    store = backends.get_backend()
    rows = {r["id"]: r for r in store.get_tasks(ids)}
    assert len(rows) == 200
    for tid, item in zip(ids, items):
        assert json.loads(rows[tid]["payload"]) == {"args": [item], "kwargs": {}}
        assert rows[tid]["status"] == "pending" and rows[tid]["name"] == "echo"
    assert liteq.get_task_status(ids[17])["args"] == [items[17]]
    assert echo.delay("after") == ids[-1] + 1


def test_starmap_preserves_arguments(db, echo):
    calls = [(1, "a"), (), ([1, {"x": None}],), ("é", 2.5, False)]
    ids = echo.starmap(calls)
    assert ids == list(range(ids[0], ids[0] + len(calls)))
    assert [liteq.get_task_status(i)["args"] for i in ids] == [list(c) for c in calls]
    assert echo.starmap([]) == [] and echo.map(iter(())) == []
    gen_ids = echo.map(x for x in "abc")  # any iterable, including a generator
    assert [liteq.get_task_status(i)["args"] for i in gen_ids] == [["a"], ["b"], ["c"]]


def test_starmap_options(db, echo):
    before = time.time()
    ids = echo.starmap([(1,), (2,)], queue="bulk", priority=3, countdown=60, timeout=9)
    after = time.time()
    for tid in ids:
        row = task_row(db, tid)
        assert (row["queue"], row["priority"], row["timeout"]) == ("bulk", 3, 9)
        assert before + 60 - 0.01 <= row["run_at"] <= after + 60 + 0.01


def test_bulk_with_a_bad_item_in_the_middle_writes_nothing(db, echo):
    echo.delay("existing")
    n = count_tasks(db)
    with pytest.raises(TypeError) as info:
        echo.starmap([(1,), (2,), (3, object()), (4,)])
    assert "call 2" in str(info.value) and "positional argument 1" in str(info.value)
    with pytest.raises(TypeError, match="call 1"):
        echo.map([1, {2}, 3])
    with pytest.raises(TypeError):
        echo.map([1, float("nan")])
    assert count_tasks(db) == n


def _starmap_producer(worker, batches, size, out_path, start):
    backends.forget_backends()

    @task(name="bulk_race")
    def bulk_race(*args):
        return args

    start.wait(10)
    got = []
    for b in range(batches):
        ids = bulk_race.starmap([(worker, b, i) for i in range(size)])
        got.append(ids)
    with open(out_path, "w") as f:
        json.dump(got, f)


def test_bulk_ids_are_right_when_producers_race(db, workdir, clean_registry):
    """The ids starmap returns are the rows it wrote, even with other producers writing."""
    backends.open_backend(db).close()  # create the schema up front
    procs, outs = [], []
    start = FORK.Event()
    try:
        for w in range(4):
            out = os.path.join(workdir, f"ids-{w}.json")
            outs.append(out)
            p = FORK.Process(target=_starmap_producer, args=(w, 30, 25, out, start))
            p.start()
            procs.append(p)
        start.set()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"producer exit code {p.exitcode}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    store = backends.open_backend(db)
    try:
        for w, out in enumerate(outs):
            with open(out) as f:
                batches = json.load(f)
            for b, ids in enumerate(batches):
                assert len(ids) == 25
                rows = {r["id"]: r for r in store.get_tasks(ids)}
                for i, tid in enumerate(ids):
                    assert json.loads(rows[tid]["payload"])["args"] == [w, b, i]
        assert store.count_tasks() == 4 * 30 * 25
    finally:
        store.close()


# ---- waiting for a task --------------------------------------------------------------


def _finish_later(db, task_id, delay, result):
    time.sleep(delay)
    store = backends.open_backend(db)
    try:
        claimed = store.claim("finisher", ["default"], 10)
        assert [r["id"] for r in claimed] == [task_id]
        t = time.time()
        store.record_outcomes("finisher", done=[(task_id, json.dumps(result), t, t)])
    finally:
        store.close()


def test_wait_for_task_returns_when_done(db, echo):
    tid = echo.delay(5)
    errors = []

    def run():
        try:
            _finish_later(db, tid, 0.3, {"answer": 42})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        start = time.monotonic()
        status = liteq.wait_for_task(tid, timeout=10)
        assert time.monotonic() - start >= 0.2  # it really waited
        assert status["status"] == "done" and status["result"] == {"answer": 42}
    finally:
        th.join(10)
    assert not errors, errors


def test_wait_for_task_sees_another_process_finish(db, echo):
    tid = echo.delay(5)
    backends.forget_backends()
    proc = FORK.Process(target=_finish_later, args=(db, tid, 0.3, [1, 2]))
    proc.start()
    try:
        status = liteq.wait_for_task(tid, timeout=15)
        assert status["status"] == "done" and status["result"] == [1, 2]
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    assert proc.exitcode == 0


def test_wait_for_task_times_out(db, echo):
    tid = echo.delay(5)
    start = time.monotonic()
    with pytest.raises(liteq.WaitTimeout) as info:
        liteq.wait_for_task(tid, timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 5
    assert isinstance(info.value, TimeoutError)
    assert str(tid) in str(info.value) and "pending" in str(info.value)
    assert liteq.get_task_status(tid)["status"] == "pending"  # waiting changed nothing


def test_wait_for_unknown_task_raises(db, echo):
    with pytest.raises(KeyError):
        liteq.wait_for_task(123456, timeout=0.2)


def test_wait_for_cancelled_and_failed_tasks_returns(db, echo):
    tid = echo.delay(1)
    assert liteq.cancel_task(tid)
    assert liteq.wait_for_task(tid, timeout=2)["status"] == "cancelled"
    tid2 = echo.delay(2)
    store = backends.get_backend()
    store.claim("w", ["default"], 1)
    t = time.time()
    store.record_outcomes("w", failed=[(tid2, "ValueError: bad\nTraceback ...", t, t)])
    status = liteq.wait_for_task(tid2, timeout=2)
    assert status["status"] == "failed" and "ValueError: bad" in status["error"]


# ---- cancel / retry / purge from liteq ---------------------------------------------------


def test_cancel_retry_purge(db, echo):
    f, r, p = echo.delay("f"), echo.delay("r"), echo.delay("p")
    store = backends.get_backend()
    assert [row["id"] for row in store.claim("w", ["default"], 2)] == [f, r]
    t = time.time()
    assert len(store.record_outcomes("w", failed=[(f, "boom", t, t)])) == 1
    # Now f is failed, r is running, p is pending.

    assert liteq.cancel_task(p) is True
    assert liteq.get_task_status(p)["status"] == "cancelled"
    assert liteq.get_task_status(p)["finished_at"] is not None
    assert liteq.cancel_task(p) is False  # already cancelled
    assert liteq.cancel_task(f) is False  # failed
    assert liteq.cancel_task(987654) is False
    assert liteq.get_task_status(r)["status"] == "running"

    assert liteq.retry_task(r) is False  # only failed or cancelled
    assert liteq.retry_task(f) is True
    st = liteq.get_task_status(f)
    assert st["status"] == "pending" and st["attempts"] == 0 and st["finished_at"] is None
    assert liteq.retry_task(p) is True  # a cancelled task can be retried by id
    assert liteq.get_task_status(p)["status"] == "pending"
    assert liteq.retry_task(987654) is False

    # Finish f and p, then purge: only finished tasks older than the age go.
    assert [row["id"] for row in store.claim("w", ["default"], 5)] == [f, p]
    t = time.time()
    assert len(store.record_outcomes("w", done=[(f, "null", t, t), (p, "null", t, t)])) == 2
    assert liteq.purge_tasks(3600) == 0
    assert liteq.get_task_status(f)["status"] == "done"
    assert liteq.purge_tasks(0) == 2
    assert liteq.get_task_status(f) is None and liteq.get_task_status(p) is None
    assert liteq.get_task_status(r)["status"] == "running"  # never purged
