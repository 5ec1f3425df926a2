"""A worker child's end of its socket (liteqd.child_channel.Channel), over a socket
pair: the supervisor's messages sorted by type, the rule for tasks that must not
start, and the hand-back of recalled tasks."""

import socket
import time

import pytest

from liteqd import protocol
from liteqd.child_channel import Channel


@pytest.fixture
def pair():
    supervisor, child = socket.socketpair()
    supervisor.settimeout(5)
    # Blocking, as in a worker child (its non-blocking reads use MSG_DONTWAIT); each
    # receive() below reads what was sent before it.
    child.setblocking(True)
    yield supervisor, Channel(child)
    supervisor.close()
    child.close()


def _received(sock):
    reader = protocol.LineReader()
    messages = []
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            messages += reader.feed(data)
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return messages


def test_messages_are_sorted_by_type_and_tasks_keep_their_order(pair):
    supervisor, channel = pair
    supervisor.sendall(protocol.encode([
        protocol.task(1, "a", "[]", None), protocol.cancel(7), protocol.task(2, "b", "[]", 5.0),
        protocol.give_back([3, 4]), protocol.task(3, "c", "[]", None)]))
    assert channel.receive()
    assert [m.id for m in reversed(channel.pending)] == [1, 2, 3]   # next one last
    assert channel.cancelled == {7}
    assert channel.recalled == {3, 4}


def test_messages_for_the_supervisor_are_ignored_by_the_child(pair):
    supervisor, channel = pair
    supervisor.sendall(protocol.encode([protocol.ready(5), protocol.skipped(1),
                                        protocol.task(9, "a", "[]", None)]))
    assert channel.receive()
    assert [m.id for m in channel.pending] == [9]
    assert not channel.cancelled and not channel.recalled


def test_a_task_that_may_start_gets_no_refusal(pair):
    _, channel = pair
    assert channel.refusal(protocol.task(1, "a", "[]", None)) is None
    later = time.monotonic() + 60
    assert channel.refusal(protocol.task(2, "a", "[]", None, start_by=later)) is None


def test_a_recalled_task_is_skipped_once(pair):
    _, channel = pair
    channel.recalled.add(1)
    assert channel.refusal(protocol.task(1, "a", "[]", None)) == protocol.skipped(1)
    assert channel.recalled == set()


def test_a_task_held_past_its_start_by_is_skipped(pair):
    _, channel = pair
    past = time.monotonic() - 1
    assert channel.refusal(protocol.task(1, "a", "[]", None, start_by=past)) == \
        protocol.skipped(1)


def test_a_task_cancelled_before_it_started_fails_as_cancelled(pair):
    _, channel = pair
    channel.cancelled.add(1)
    answer = channel.refusal(protocol.task(1, "a", "[]", None))
    assert isinstance(answer, protocol.Result)
    assert (answer.id, answer.ok, answer.retry) == (1, False, False)
    assert answer.text.startswith("TaskCancelled: cancelled before it started")


def test_hand_back_returns_only_the_recalled_tasks_unstarted(pair):
    supervisor, channel = pair
    supervisor.sendall(protocol.encode([protocol.task(i, "a", "[]", None) for i in (1, 2, 3)]))
    assert channel.receive()
    recalled = {1, 3, 99}
    channel.hand_back(only=recalled)
    assert [m.id for m in channel.pending] == [2]
    assert recalled == {99}
    assert _received(supervisor) == [protocol.skipped(1), protocol.skipped(3)]


def test_hand_back_returns_every_queued_task_in_order(pair):
    supervisor, channel = pair
    supervisor.sendall(protocol.encode([protocol.task(i, "a", "[]", None) for i in (1, 2)]))
    assert channel.receive()
    channel.hand_back()
    assert channel.pending == []
    assert _received(supervisor) == [protocol.skipped(1), protocol.skipped(2)]


def test_receive_is_false_at_the_end_of_the_stream(pair):
    supervisor, channel = pair
    supervisor.shutdown(socket.SHUT_WR)
    assert channel.receive() is False
