"""Every bad value that reaches a backend is refused the same way on both: the same
exception type with the same message, before anything is written.

The values are put straight into NewTask / NewTasks / TaskOptions (as a caller of the
backend API, an integration or a test would), past the checks of @task and .delay(),
so it is the backends' shared rules (liteq.backends.rules) that refuse them. Each case
runs through every way of enqueueing that takes the value, on each backend
(conftest's `db`).
"""

import math

import pytest

from liteq.taskspec import NewTask, NewTasks, TaskOptions


NAN, INF = math.nan, math.inf
PAYLOAD = '{"args":[],"kwargs":{}}'

# (TaskOptions field, bad value, the exact message)
BAD_OPTIONS = [
    ("timeout", NAN, "timeout must be a finite number, got nan"),
    ("timeout", INF, "timeout must be a finite number, got inf"),
    ("timeout", -INF, "timeout must be a finite number, got -inf"),
    ("timeout", 0, "timeout must be > 0, got 0"),
    ("timeout", -1.5, "timeout must be > 0, got -1.5"),
    ("timeout", 1e300, "timeout must be at most 315,360,000, got 1e+300"),
    ("priority", -2**63, "priority must be >= -2147483648, got -9223372036854775808"),
    ("priority", 2**63, "priority must be at most 2,147,483,647, got 9223372036854775808"),
    ("priority", 2**31, "priority must be at most 2,147,483,647, got 2147483648"),
    ("priority", -2**31 - 1, "priority must be >= -2147483648, got -2147483649"),
    ("priority", NAN, "priority must be a finite number, got nan"),
    ("priority", INF, "priority must be a finite number, got inf"),
    ("max_retries", -1, "max_retries must be >= 0, got -1"),
    ("max_retries", 10**12, "max_retries must be at most 1,000,000, got 1000000000000"),
    ("max_retries", NAN, "max_retries must be a finite number, got nan"),
    ("retry_delay", NAN, "retry_delay must be a finite number, got nan"),
    ("retry_delay", -1, "retry_delay must be >= 0, got -1"),
    ("retry_max_delay", INF, "retry_max_delay must be a finite number, got inf"),
    ("retry_backoff", 1e6, "retry_backoff must be at most 100.0, got 1000000.0"),
    ("retry_backoff", -INF, "retry_backoff must be a finite number, got -inf"),
    ("queue", "", "queue must be a non-empty string, got ''"),
    ("queue", "a,b", "queue 'a,b' must not hold a comma or start or end with a space "
                     "(liteqd --queues could not name it)"),
    ("queue", " padded", "queue ' padded' must not hold a comma or start or end with a "
                         "space (liteqd --queues could not name it)"),
    ("queue", "a\x00b", "queue 'a\\x00b' holds the control character or lone surrogate "
                        "'\\x00'"),
    ("queue", "q" * 201, "queue must be 1 to 200 characters long, got 201 "
                         "('qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq...')"),
]

# (NewTask field, bad value, the exact message): due times, names and keys.
BAD_FIELDS = [
    ("delay", NAN, "delay must be a finite number, got nan"),
    ("delay", INF, "delay must be a finite number, got inf"),
    ("delay", -INF, "delay must be a finite number, got -inf"),
    ("delay", 1e300, "delay must be at most 315,360,000, got 1e+300"),
    ("delay", -1e300, "delay must be >= -315360000, got -1e+300"),
    ("run_at", NAN, "run_at (eta) must be a finite number, got nan"),
    ("run_at", INF, "run_at (eta) must be a finite number, got inf"),
    ("run_at", -1.0, "run_at (eta) must be >= 0, got -1.0"),
    ("run_at", 1e300, "run_at (eta) must be at most 253,402,300,799.0, got 1e+300"),
    ("name", "", "task name must be 1 to 200 characters long, got 0 ('')"),
    ("name", "n" * 201, "task name must be 1 to 200 characters long, got 201 "
                        "('nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...')"),
    ("name", "line\nbreak", "task name 'line\\nbreak' holds the control character or "
                            "lone surrogate '\\n'"),
]

BAD_UNIQUE_KEYS = [
    ("", "unique_key must be a non-empty string, got ''"),
    ("k" * 513, "unique_key is 513 characters long, over the limit of 512; pass a hash "
                "of it instead"),
    ("a\x00", "unique_key 'a\\x00' holds '\\x00', which no database stores alike; pass "
              "a hash of it instead"),
]

BAD_PARENTS = [
    ((0,), "depends_on: 0 is not a task id"),
    ((-3,), "depends_on: -3 is not a task id"),
]

# (args_json, count, the exact message) of a batch.
BAD_BATCHES = [
    ("[[1],", 2, "args_json must be a JSON array of argument lists; it is not valid JSON"),
    ('{"a": 1}', 1, "args_json must be a JSON array of argument lists, got dict"),
    ("[1, 2]", 2, "args_json must be a JSON array of argument lists: every element must "
                  "be an array"),
    ("[[1], [2]]", 3, "args_json holds 2 calls, but count is 3"),
]


def _task(**fields):
    """A good NewTask with `fields` set afterwards (past its own checks)."""
    task = NewTask("rules.probe", PAYLOAD, TaskOptions())
    for key, value in fields.items():
        setattr(task, key, value)
    return task


def _batch(**fields):
    """A good NewTasks of two calls with `fields` set afterwards."""
    tasks = NewTasks("rules.probe", "[[1], [2]]", 2, TaskOptions())
    for key, value in fields.items():
        setattr(tasks, key, value)
    return tasks


def _refused(call, message, kind=ValueError):
    with pytest.raises(kind) as caught:
        call()
    assert type(caught.value) is kind
    assert str(caught.value) == message


def _every_path(db, store, fields, message):
    """A task with `fields` is refused with `message` by enqueue, as a unique task, in a
    chain after a good task, and (for a field a batch has) by enqueue_many. Nothing is
    written."""
    _refused(lambda: store.enqueue(_task(**fields)), message)
    _refused(lambda: store.enqueue(_task(unique_key="rules-key", **fields)), message)
    _refused(lambda: store.enqueue_chain([_task(), _task(**fields)]), message)
    if set(fields) <= {"options", "name", "run_at", "delay"}:
        _refused(lambda: store.enqueue_many(_batch(**fields)), message)
    assert store.count_tasks() == 0


@pytest.mark.parametrize("option, value, message", BAD_OPTIONS,
                         ids=[f"{o}={v!r}"[:40] for o, v, _ in BAD_OPTIONS])
def test_a_bad_option_is_the_same_value_error_on_every_backend(db, store, option, value,
                                                               message):
    _every_path(db, store, {"options": TaskOptions(**{option: value})}, message)


@pytest.mark.parametrize("field, value, message", BAD_FIELDS,
                         ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_FIELDS])
def test_a_bad_due_time_or_name_is_the_same_value_error_on_every_backend(db, store, field,
                                                                         value, message):
    _every_path(db, store, {field: value}, message)


@pytest.mark.parametrize("key, message", BAD_UNIQUE_KEYS, ids=["empty", "513", "nul"])
def test_a_bad_unique_key_is_the_same_value_error_on_every_backend(db, store, key, message):
    _refused(lambda: store.enqueue(_task(unique_key=key)), message)
    assert store.count_tasks() == 0


@pytest.mark.parametrize("parents, message", BAD_PARENTS, ids=["zero", "negative"])
def test_a_bad_parent_id_is_the_same_value_error_on_every_backend(db, store, parents,
                                                                  message):
    _refused(lambda: store.enqueue(_task(depends_on=parents)), message)
    _refused(lambda: store.enqueue_chain([_task(), _task(depends_on=parents)]), message)
    assert store.count_tasks() == 0


@pytest.mark.parametrize("args_json, count, message", BAD_BATCHES,
                         ids=["not-json", "object", "not-lists", "count"])
def test_bad_batch_arguments_are_the_same_value_error_on_every_backend(db, store, args_json,
                                                                       count, message):
    _refused(lambda: store.enqueue_many(_batch(args_json=args_json, count=count)), message)
    assert store.count_tasks() == 0


def test_a_float_priority_is_stored_as_the_same_int_on_every_backend(db, store):
    task_id = store.enqueue(_task(options=TaskOptions(priority=2.9, max_retries=2.0)))
    row = store.get_task(task_id)
    assert (row["priority"], row["max_retries"]) == (2, 2)
    assert type(row["priority"]) is int


def test_values_at_the_limits_are_accepted_on_every_backend(db, store):
    options = TaskOptions(priority=-2**31, timeout=10 * 365 * 86400, max_retries=1_000_000,
                          retry_backoff=100.0, queue="é" * 200)
    first = store.enqueue(_task(options=options, delay=10 * 365 * 86400))
    last = store.enqueue(_task(options=TaskOptions(priority=2**31 - 1), run_at=253402300799.0))
    assert store.get_task(first)["priority"] == -2**31
    assert store.get_task(last)["priority"] == 2**31 - 1
    assert store.enqueue_many(_batch()) == [last + 1, last + 2]
