"""Annotated tasks for tests/api/test_task_handle.py and tests/api/test_typed_values.py
(queue "typed")."""

import asyncio
import dataclasses
import datetime as dt
import enum
from typing import Any

from liteq import register_type, task


@task(queue="typed")
def add(a: int, b: int) -> int:
    """The sum."""
    return a + b


@task(queue="typed")
async def fetch(url: str) -> dict[str, int]:
    """A coroutine task: its handle's result is the awaited dict."""
    await asyncio.sleep(0)
    return {url: len(url)}


@task(queue="typed", max_retries=0)
def explode(why: str) -> int:
    """Always fails, once."""
    raise ValueError(f"explode: {why}")


# ---- values that keep their types (liteq.codec) --------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
    label: tuple[str, ...] = ()


class Money:
    """An app's own type, registered with an encoder and a decoder."""

    def __init__(self, cents: int, currency: str) -> None:
        self.cents, self.currency = cents, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.cents, self.currency) == (other.cents,
                                                                             other.currency)


register_type(Money, "money", lambda m: [m.cents, m.currency], lambda v: Money(v[0], v[1]))


@task(queue="typed")
def describe(*values: Any, **named: Any) -> list[Any]:
    """Every argument with its type's name, and the values themselves back as the result."""
    return [[type(v).__name__ for v in values], {k: type(v).__name__ for k, v in named.items()},
            values, named]


@task(queue="typed")
def shift(when: dt.datetime, by: dt.timedelta) -> dt.datetime:
    """A typed result: a datetime (its zone kept)."""
    return when + by


try:
    import pydantic
except ImportError:  # the dev extra installs it (through fastapi)
    pydantic = None

if pydantic is not None:
    class Order(pydantic.BaseModel):
        id: int
        when: dt.datetime
        tags: tuple[str, ...] = ()
