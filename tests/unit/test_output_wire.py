"""The framing of a worker child's output (liteqd.output_wire): pure functions."""

import logging

from liteqd.output_wire import TASK_TAG_BYTES, dropped_lines, level_of, tag_line, untag


def test_a_tagged_line_gives_back_its_text_and_task_id():
    raw = tag_line(42, "hello").encode()
    assert raw.startswith(TASK_TAG_BYTES)
    assert untag(raw.rstrip(b"\n")) == (b"hello", 42)


def test_an_untagged_line_is_left_as_it_is():
    assert untag(b"plain text") == (b"plain text", None)


def test_a_tag_without_a_number_is_not_a_tag():
    raw = TASK_TAG_BYTES + b"abc\0text"
    assert untag(raw) == (raw, None)


def test_a_tagged_line_may_hold_nul_bytes_after_the_tag():
    assert untag(tag_line(7, "a\0b").encode().rstrip(b"\n")) == (b"a\0b", 7)


def test_record_levels_map_to_the_standard_ones_below_them():
    assert level_of(logging.ERROR) == logging.ERROR
    assert level_of(logging.ERROR + 5) == logging.ERROR
    assert level_of(logging.INFO + 1) == logging.INFO
    assert level_of(5) == logging.DEBUG
    assert level_of(100) == logging.CRITICAL


def test_dropped_lines_counts_ended_lines_and_an_open_tail():
    assert dropped_lines(b"a\nb\nc", 0, skipping=False) == (3, True)
    assert dropped_lines(b"a\nb\n", 0, skipping=False) == (2, False)
    assert dropped_lines(b"xx\na\n", 3, skipping=False) == (1, False)


def test_dropped_lines_does_not_count_a_line_being_skipped_again():
    # The first line's start was already logged cut (or counted): its end is not a line.
    assert dropped_lines(b"rest\nb\n", 0, skipping=True) == (1, False)
    # Still inside that same line: nothing new.
    assert dropped_lines(b"more of it", 0, skipping=True) == (0, True)
    assert dropped_lines(b"end\nnew", 0, skipping=True) == (1, True)
