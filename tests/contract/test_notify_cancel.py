"""notify_cancel() on both backends: the daemon's wake-up channel hears which task
was cancelled, so the daemon running it stops it."""

import os
import select

from liteq import backends

WAKE_TIMEOUT = 10.0


def _drain_until_cancelled(channel):
    """Drain the channel until a cancellation arrives (or WAKE_TIMEOUT passes)."""
    heard = []
    while not heard:
        readable, _, _ = select.select([channel], [], [], WAKE_TIMEOUT)
        assert readable, f"no cancellation within {WAKE_TIMEOUT} s"
        channel.drain()
        heard = channel.cancelled()
    return heard


def test_notify_cancel_reaches_the_wake_channel(db):
    backend = backends.get_backend(db)
    channel = backend.open_wake_channel(os.environ["LITEQ_SOCKET"])
    try:
        backend.notify_cancel(7)
        assert _drain_until_cancelled(channel) == [7]
    finally:
        channel.close()


def test_notify_cancel_inside_a_batch_is_heard(db):
    backend = backends.get_backend(db)
    channel = backend.open_wake_channel(os.environ["LITEQ_SOCKET"])
    try:
        with backend.batch():
            backend.notify_cancel(11)
        assert _drain_until_cancelled(channel) == [11]
    finally:
        channel.close()


def test_notify_cancel_never_raises_without_a_connection(db):
    backend = backends.open_backend(db)
    backend.close()
    backend.notify_cancel(3)   # a hint: nothing to send it on, and no error either
