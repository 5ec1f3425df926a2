"""Arguments and results that keep their types (liteq.codec): datetime with its zone,
date, time, timedelta, UUID, Decimal, Enum, bytes, tuples, non-string dict keys,
dataclasses, pydantic models and an app's registered type go through a real daemon's
child and come back as the same types; on each backend."""

import datetime as dt
import decimal
import json
import os
import uuid

import pytest

import liteq
from liteq.serialization import decode_payload, decode_result

from support import APPS
from support.daemon_helpers import load_app_module
from support.task_table import count_tasks, task_row

APP = os.path.join(APPS, "typed_app.py")
TOKYO = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
def app(db, clean_registry):
    return load_app_module(APP)


def _values(app):
    return [dt.datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=TOKYO), dt.date(2026, 2, 28),
            dt.time(23, 59, 1, tzinfo=dt.timezone.utc), dt.timedelta(days=2, microseconds=5),
            uuid.UUID("12345678-1234-5678-1234-567812345678"), decimal.Decimal("10.10"),
            app.Color.BLUE, b"\x00\xffbytes", (1, ("nested", 2.5)), {1: "one", (2, 3): "pair"},
            app.Point(1, 2, ("a", "b")), app.Money(1999, "EUR"), [dt.date(2020, 1, 1)]]


def test_typed_arguments_and_results_round_trip_through_the_daemon(app, daemons):
    values = _values(app)
    handle = app.describe.delay(*values, when=values[0], money=values[-2])
    shifted = app.shift.delay(values[0], dt.timedelta(hours=1))
    daemons.start("--concurrency", "1", "--queues", "typed", app=APP)
    arg_types, kwarg_types, back, named = handle.result(timeout=30)
    # In the child, each argument had its own type ...
    assert arg_types == ["datetime", "date", "time", "timedelta", "UUID", "Decimal", "Color",
                         "bytes", "tuple", "dict", "Point", "Money", "list"]
    assert kwarg_types == {"when": "datetime", "money": "Money"}
    # ... and the result brings them back as the same values and types.
    assert back == tuple(values) and [type(v) for v in back] == [type(v) for v in values]
    assert back[0].utcoffset() == dt.timedelta(hours=9) and named["money"] == values[-2]
    result = shifted.result(timeout=30)
    assert result == values[0] + dt.timedelta(hours=1) and result.tzinfo is not None


def test_pydantic_models_round_trip(app, daemons):
    pytest.importorskip("pydantic")
    order = app.Order(id=7, when=dt.datetime(2026, 1, 1, tzinfo=TOKYO), tags=("a", "b"))
    handle = app.describe.delay(order)
    daemons.start("--concurrency", "1", "--queues", "typed", app=APP)
    arg_types, _, back, _ = handle.result(timeout=30)
    assert arg_types == ["Order"]
    assert back == (order,) and type(back[0]) is app.Order
    assert back[0].when.utcoffset() == dt.timedelta(hours=9)


def test_the_stored_form_is_readable_json(app, db):
    handle = app.shift.delay(dt.datetime(2026, 12, 1, 9, 30, tzinfo=TOKYO),
                             dt.timedelta(minutes=5))
    payload = json.loads(task_row(db, handle)["payload"])
    assert payload["args"][0] == {"__liteq_type__": "datetime",
                                  "value": "2026-12-01T09:30:00+09:00"}
    assert payload["args"][1] == {"__liteq_type__": "timedelta", "value": [0, 300, 0]}
    status = handle.status()
    assert status.args == [dt.datetime(2026, 12, 1, 9, 30, tzinfo=TOKYO),
                           dt.timedelta(minutes=5)]


def test_plain_rows_of_earlier_versions_read_as_before():
    assert decode_payload('{"args":[1,"a",[2,3]],"kwargs":{"k":{"x":null}}}') == (
        [1, "a", [2, 3]], {"k": {"x": None}})
    assert decode_payload("[1, 2]") == ([1, 2], {})
    assert decode_result('{"1": "a"}') == {"1": "a"}
    assert decode_result("not json at all") == "not json at all"


def test_an_unknown_type_is_a_type_error_at_the_call_and_nothing_is_written(app, db):
    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"positional argument 1 of task 'describe' cannot be "
                                        r"stored as JSON: .*Opaque.*register_type"):
        app.describe.delay(1, Opaque())
    with pytest.raises(TypeError, match=r"argument 'x' of task 'describe'"):
        app.describe.delay(x=[Opaque()])
    with pytest.raises(TypeError, match="call 1"):
        app.describe.starmap([(1,), (Opaque(),)])
    assert count_tasks(db) == 0


def test_bulk_and_unique_calls_keep_the_types_too(app, db):
    days = [dt.date(2026, 1, d) for d in (1, 2, 3)]
    handles = app.describe.map(days)
    assert [h.status().args for h in handles] == [[d] for d in days]
    assert liteq.get_task_status(handles[0]).args[0] == days[0]
