"""JSON encoding of task arguments and results. Never pickle.

Values JSON cannot hold as they are (datetime, UUID, tuple, dataclass, ...) are
stored in the tagged form of liteq.codec; calls with plain JSON arguments take the
fast path they always took."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

from . import settings
from .codec import has_tags, to_json, decode_tagged

_PLAIN = frozenset({str, int, float, bool, type(None)})

_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _check_value(value: Any, label: str, task_name: str) -> None:
    try:
        _encoder.encode(to_json(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{label} of task {task_name!r} cannot be stored as JSON: {exc}"
        ) from None


# What a row's payload adds around one call's positional-argument array (see
# encode_args_array and the bulk INSERT, which wraps each array the same way).
_ARGS_ONLY_WRAPPING = len('{"args":,"kwargs":{}}')


def _utf8_size(text: str) -> int:
    """The size of `text` in UTF-8 bytes (constant time for ASCII text: the string knows)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _too_big(task_name: str, size: int, limit: int, what: str = "the arguments") -> ValueError:
    return ValueError(
        f"{what} of task {task_name!r} encode to {size:,} bytes, over the limit of "
        f"{limit:,} bytes (LITEQ_MAX_PAYLOAD); nothing was enqueued. Pass a reference "
        f"(a file path, a URL, a row id) instead of the data itself")


# A payload of at most this many characters fits under any limit that may be set (no
# character takes more than 4 bytes in UTF-8): nearly every call stops at this one
# comparison, without reading the environment.
_ALWAYS_FITS = settings.MIN_MAX_PAYLOAD // 4


def _check_size(task_name: str, text: str) -> None:
    """Raise ValueError when an encoded payload is larger than LITEQ_MAX_PAYLOAD."""
    if len(text) > _ALWAYS_FITS:
        limit = settings.max_payload()
        if len(text) * 4 > limit:
            size = _utf8_size(text)
            if size > limit:
                raise _too_big(task_name, size, limit)


def encode_payload(task_name: str, args: Iterable[Any], kwargs: dict[str, Any]) -> str:
    """Encode call arguments as the JSON payload of a task row.

    Raises TypeError naming the first argument JSON cannot hold, and ValueError when
    the payload is larger than LITEQ_MAX_PAYLOAD.
    """
    args = list(args)
    try:
        # Inlined (not _all_plain()): this is every .delay()'s path.
        plain = True
        for value in args:
            if type(value) not in _PLAIN:
                plain = False
                break
        if plain and kwargs:
            for value in kwargs.values():
                if type(value) not in _PLAIN:
                    plain = False
                    break
        if plain:
            text = _encoder.encode({"args": args, "kwargs": kwargs})
        elif all(isinstance(k, str) for k in kwargs):
            text = _encoder.encode({"args": to_json(args),
                                    "kwargs": to_json(kwargs) if kwargs else kwargs})
        else:
            raise TypeError("a keyword is not a string")
    except (TypeError, ValueError):
        pass
    else:
        _check_size(task_name, text)
        return text
    # Slow path only on failure: find the argument to name in the error.
    for i, value in enumerate(args):
        _check_value(value, f"positional argument {i}", task_name)
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"keyword {key!r} of task {task_name!r} is not a string")
        _check_value(value, f"argument {key!r}", task_name)
    raise TypeError(f"arguments of task {task_name!r} cannot be stored as JSON")


def encode_args_array(task_name: str, calls: Iterable[Iterable[Any]]) -> tuple[str, int]:
    """Encode the positional arguments of many calls as one JSON array: (text, count).

    Raises TypeError naming the call and argument JSON cannot hold, and ValueError
    naming the call whose payload would be larger than LITEQ_MAX_PAYLOAD.
    """
    arg_lists = [list(args) for args in calls]
    try:
        if all(_all_plain(args) for args in arg_lists):
            text = _encoder.encode(arg_lists)
        else:
            text = _encoder.encode([to_json(args) for args in arg_lists])
    except (TypeError, ValueError):
        pass
    else:
        _check_calls_size(task_name, text, arg_lists)
        return text, len(arg_lists)
    for n, args in enumerate(arg_lists):
        try:
            encode_payload(task_name, args, {})
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"call {n}: {exc}") from None
    raise TypeError(f"arguments of task {task_name!r} cannot be stored as JSON")


def _check_calls_size(task_name: str, text: str, arg_lists: list[list[Any]]) -> None:
    # A call's payload is its array (a part of the whole array, less the brackets)
    # inside the wrapping: when the whole array would fit, every call does, and only
    # otherwise is each call measured.
    extra = _ARGS_ONLY_WRAPPING - 2
    if len(text) + extra <= _ALWAYS_FITS:
        return
    limit = settings.max_payload()
    if (len(text) + extra) * 4 <= limit or _utf8_size(text) + extra <= limit:
        return
    for n, args in enumerate(arg_lists):
        size = _utf8_size(_encoder.encode(to_json(args))) + _ARGS_ONLY_WRAPPING
        if size > limit:
            raise _too_big(task_name, size, limit, what=f"call {n}: the arguments")


def decode_payload(payload: str) -> tuple[list[Any], dict[str, Any]]:
    """Decode a payload into (args, kwargs); raises ValueError on a malformed one."""
    data: Any = _loads(payload) if payload else {}
    if isinstance(data, list):  # tolerate a bare list of positional args
        return cast("list[Any]", data), {}  # type: ignore[redundant-cast]
    if not isinstance(data, dict):
        raise ValueError(f"task payload is not a JSON object: {payload[:80]!r}")
    fields = cast("dict[str, Any]", data)
    args: list[Any] = fields.get("args") or []
    kwargs: dict[str, Any] = fields.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError(f"task payload has malformed args/kwargs: {payload[:80]!r}")
    return args, kwargs


def encode_result(value: Any) -> str:
    """Encode a task's return value; raises TypeError when JSON cannot hold it."""
    try:
        return _encoder.encode(value if type(value) in _PLAIN else to_json(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task result cannot be stored as JSON: {exc}") from None


def decode_result(text: str | None) -> Any:
    """Decode a stored result; text that is not JSON (from an old database) is returned as is."""
    if text is None:
        return None
    try:
        return _loads(text)
    except (TypeError, ValueError):
        pass
    try:  # tags this process cannot decode (a class not loaded here): the plain JSON
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _all_plain(values: Iterable[Any]) -> bool:
    """True when every value is a str, int, float, bool or None (no walk needed)."""
    for value in values:
        if type(value) not in _PLAIN:
            return False
    return True


def _loads(text: str) -> Any:
    """json.loads, decoding tagged values when the text holds any; a tag that cannot
    be decoded is a ValueError."""
    if not has_tags(text):
        return json.loads(text)
    try:
        return json.loads(text, object_hook=decode_tagged)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"cannot decode a stored value: {exc}") from None
