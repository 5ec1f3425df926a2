"""The supervisor-child protocol: every message survives encoding and decoding, split
anywhere, and junk is refused."""

import pytest

from liteqd import protocol

MESSAGES = [
    protocol.task(1, "mod.task", '[[1],{"a":"é"}]', 2.5, "emails", 2, 3, 1000.5, 12.0),
    protocol.task(2, "t", "[[],{}]", None),
    protocol.cancel(3),
    protocol.give_back([4, 5]),
    protocol.ready(1234),
    protocol.result(6, True, '{"ok":1}', 1.0, 2.0, 4096, False),
    protocol.result(7, False, "ValueError: no\nTraceback", 1.0, 2.0, 0, True, 3.5),
    protocol.result(8, False, "Fatal", 1.0, 2.0, 0, False, False),
    protocol.skipped(9),
    protocol.started([10, 11], 5.0),
]


def test_every_message_round_trips_with_its_type():
    decoded = protocol.LineReader().feed(protocol.encode(MESSAGES))
    assert decoded == MESSAGES
    assert [type(m) for m in decoded] == [type(m) for m in MESSAGES]


def test_messages_split_at_every_byte_come_out_whole():
    data = protocol.encode(MESSAGES)
    reader = protocol.LineReader()
    out = []
    for i in range(len(data)):
        out.extend(reader.feed(data[i:i + 1]))
    assert out == MESSAGES and reader.pending_bytes == 0


def test_a_partial_line_waits_for_its_end():
    reader = protocol.LineReader()
    data = protocol.encode([protocol.skipped(1)])
    assert reader.feed(data[:-3]) == [] and reader.pending_bytes == len(data) - 3
    assert reader.feed(data[-3:]) == [protocol.skipped(1)]


@pytest.mark.parametrize("line", [b'["nope", 1]\n', b'[]\n', b'["r", 1]\n'])
def test_lines_that_are_not_messages_are_refused(line):
    with pytest.raises(protocol.ProtocolError):
        protocol.LineReader().feed(line)
