"""JSON encoding of task arguments and results. Never pickle."""

import json

_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _check_value(value, label, task_name):
    try:
        _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{label} of task {task_name!r} cannot be stored as JSON: {exc}"
        ) from None


def encode_payload(task_name: str, args, kwargs) -> str:
    """Encode call arguments as the JSON payload of a task row.

    Raises TypeError naming the first argument JSON cannot hold.
    """
    try:
        return _encoder.encode({"args": list(args), "kwargs": kwargs})
    except (TypeError, ValueError):
        pass
    # Slow path only on failure: find the argument to name in the error.
    for i, value in enumerate(args):
        _check_value(value, f"positional argument {i}", task_name)
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"keyword {key!r} of task {task_name!r} is not a string")
        _check_value(value, f"argument {key!r}", task_name)
    raise TypeError(f"arguments of task {task_name!r} cannot be stored as JSON")


def encode_args_array(task_name: str, calls) -> tuple:
    """Encode the positional arguments of many calls as one JSON array: (text, count).

    Raises TypeError naming the call and argument JSON cannot hold.
    """
    arg_lists = [list(args) for args in calls]
    try:
        return _encoder.encode(arg_lists), len(arg_lists)
    except (TypeError, ValueError):
        pass
    for n, args in enumerate(arg_lists):
        try:
            encode_payload(task_name, args, {})
        except TypeError as exc:
            raise TypeError(f"call {n}: {exc}") from None
    raise TypeError(f"arguments of task {task_name!r} cannot be stored as JSON")


def decode_payload(payload: str):
    """Decode a payload into (args, kwargs); raises ValueError on a malformed one."""
    data = json.loads(payload) if payload else {}
    if isinstance(data, list):  # tolerate a bare list of positional args
        return data, {}
    if not isinstance(data, dict):
        raise ValueError(f"task payload is not a JSON object: {payload[:80]!r}")
    args = data.get("args") or []
    kwargs = data.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError(f"task payload has malformed args/kwargs: {payload[:80]!r}")
    return args, kwargs


def encode_result(value) -> str:
    """Encode a task's return value; raises TypeError when JSON cannot hold it."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task result cannot be stored as JSON: {exc}") from None


def decode_result(text):
    """Decode a stored result; text that is not JSON (from an old database) is returned as is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
