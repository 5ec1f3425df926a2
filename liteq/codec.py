"""Values that keep their types through a task's arguments and result.

JSON holds str, int, float, bool, None, lists and dicts with string keys. Any other
value is stored as a tagged object that stays readable in the panel and in SQL:

    {"__liteq_type__": "datetime", "value": "2026-12-01T09:30:00+01:00"}

Built in: datetime (with its zone), date, time, timedelta, UUID, Decimal, Enum,
bytes (base64), tuple, dict with non-string keys, dataclasses and pydantic models.
Apps add their own with register_type(). Anything else is a TypeError naming it.
Rows without tags (all rows of earlier versions) decode exactly as before.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

TAG = "__liteq_type__"
T = TypeVar("T")

# name -> (class, encode to a JSON-able value, decode from it)
_by_name: dict[str, tuple[type[Any], Callable[[Any], Any], Callable[[Any], Any]]] = {}
_by_class: dict[type[Any], str] = {}
_PLAIN = frozenset({str, int, float, bool, type(None)})
_STR_ONLY = frozenset({str})


def register_type(cls: type[T], name: str, encode: Callable[[T], Any],
                  decode: Callable[[Any], T]) -> None:
    """Let values of `cls` (and its subclasses) be task arguments and results: stored
    as {"__liteq_type__": name, "value": encode(obj)}, read back as decode(value).
    Register in the app module, so that producers and the daemon's children both do."""
    if not isinstance(cls, type):
        raise TypeError(f"register_type() needs a class, got {cls!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_type() needs a non-empty name, got {name!r}")
    if not (callable(encode) and callable(decode)):
        raise TypeError("register_type() needs an encode and a decode function")
    known = _by_name.get(name)
    if known is not None and known[0] is not cls and known[0].__qualname__ != cls.__qualname__:
        raise ValueError(f"type name {name!r} is already registered for {known[0]!r}")
    _by_name[name] = (cls, encode, decode)
    _by_class[cls] = name


def _class_path(cls: type[Any]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _find_class(path: str, kind: Callable[[type[Any]], bool]) -> type[Any]:
    """The class a tag names ("module:Qualname"). When that module cannot be imported
    here (an app file loaded under another module name), the loaded class of that
    name and kind."""
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and kind(obj):
            return obj
    except (ImportError, AttributeError, ValueError):
        pass
    found = [c for m in list(sys.modules.values()) for c in [getattr(m, qualname, None)]
             if isinstance(c, type) and c.__qualname__ == qualname and kind(c)]
    if found:
        # The same file loaded twice (an app run as __main__ and imported, or
        # reloaded): the module loaded last is the app's current code.
        return found[-1]
    raise ValueError(f"cannot decode a {path!r}: no such class is loaded here")


def _is_pydantic(cls: type[Any]) -> bool:
    return any(c.__module__.startswith("pydantic") and c.__name__ == "BaseModel"
               for c in cls.__mro__)


def _tag(name: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {TAG: name, **extra, "value": value}


def to_json(value: Any) -> Any:
    """`value` with every non-JSON part replaced by its tagged form (the `default` of
    the encoder, and the walk of containers JSON would silently change)."""
    kind: type[Any] = value.__class__
    if kind in _PLAIN:
        return value
    # The checks run in C (map over type()): plain JSON containers, the usual case,
    # cost a pass over their items and are never copied.
    if kind is list:
        if _PLAIN.issuperset(map(type, value)):
            return value
        return [to_json(v) for v in value]
    if kind is dict:
        if _STR_ONLY.issuperset(map(type, value)) and TAG not in value:
            if _PLAIN.issuperset(map(type, value.values())):
                return value
            return {k: to_json(v) for k, v in value.items()}
        return _tag("dict", [[to_json(k), to_json(v)] for k, v in value.items()])
    if kind is tuple:
        return _tag("tuple", [to_json(v) for v in value])
    return _special(value)


def _special(value: Any) -> Any:
    """The tagged form of a value that is not a plain list, dict or tuple."""
    cls: type[Any] = value.__class__
    name = _by_class.get(cls)
    if name is None:
        name = next((n for c, n in _by_class.items() if isinstance(value, c)), None)
    if name is not None:
        return _tag(name, to_json(_by_name[name][1](value)))
    if isinstance(value, enum.Enum):
        return _tag("enum", to_json(value.value), cls=_class_path(cls))
    if isinstance(value, dt.datetime):
        return _tag("datetime", value.isoformat())
    if isinstance(value, dt.date):
        return _tag("date", value.isoformat())
    if isinstance(value, dt.time):
        return _tag("time", value.isoformat())
    if isinstance(value, dt.timedelta):
        return _tag("timedelta", [value.days, value.seconds, value.microseconds])
    if isinstance(value, uuid.UUID):
        return _tag("uuid", str(value))
    if isinstance(value, decimal.Decimal):
        return _tag("decimal", str(value))
    if isinstance(value, (bytes, bytearray)):
        return _tag("bytes", base64.b64encode(value).decode("ascii"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return _tag("dataclass", fields, cls=_class_path(cls))
    if _is_pydantic(cls):
        dump: Any = getattr(value, "model_dump")(mode="json")
        return _tag("pydantic", dump, cls=_class_path(cls))
    for plain in (bool, int, float, str):  # a subclass of a JSON type (a TaskHandle, ...)
        if isinstance(value, plain):
            return plain(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable "
                    f"(and not a type LiteQ keeps: register it with liteq.register_type)")


def decode_tagged(obj: dict[str, Any]) -> Any:
    """The object_hook of the decoder: a tagged dict back to its value."""
    name = obj.get(TAG)
    if name is None or "value" not in obj:
        return obj
    value = obj["value"]
    builtin = _DECODERS.get(name)
    if builtin is not None:
        return builtin(value, obj)
    registered = _by_name.get(name)
    if registered is None:
        raise ValueError(f"stored value of type {name!r}: no such type is registered here "
                         f"(liteq.register_type)")
    return registered[2](value)


def _dataclass(value: Any, obj: dict[str, Any]) -> Any:
    cls = _find_class(obj["cls"], dataclasses.is_dataclass)
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    made = cls(**{k: v for k, v in value.items() if k in init})
    for k, v in value.items():
        if k not in init:
            object.__setattr__(made, k, v)
    return made


_DECODERS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "datetime": lambda v, o: dt.datetime.fromisoformat(v),
    "date": lambda v, o: dt.date.fromisoformat(v),
    "time": lambda v, o: dt.time.fromisoformat(v),
    "timedelta": lambda v, o: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "uuid": lambda v, o: uuid.UUID(v),
    "decimal": lambda v, o: decimal.Decimal(v),
    "bytes": lambda v, o: base64.b64decode(v),
    "tuple": lambda v, o: tuple(v),
    "dict": lambda v, o: {k: x for k, x in v},
    "enum": lambda v, o: _find_class(o["cls"], lambda c: issubclass(c, enum.Enum))(v),
    "dataclass": _dataclass,
    "pydantic": lambda v, o: _find_class(o["cls"], _is_pydantic).model_validate(v),
}


def has_tags(text: str) -> bool:
    """True when stored JSON text holds tagged values (else plain json.loads reads it)."""
    return TAG in text
