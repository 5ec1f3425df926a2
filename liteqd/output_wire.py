"""The framing of what a worker child writes to its output pipes, shared by the child
(liteqd.task_output) and the supervisor (liteqd.output_pump).

A task's end is marked in each pipe with END_MARK, written in one write of fewer
than PIPE_BUF bytes, so it is never split between two reads of the whole pipe. In
a child that runs many coroutines at once, each line a task prints starts with
TASK_TAG, the task's id and a NUL.
"""

import logging

MAX_LINE = 16 * 1024            # bytes of one line that are logged; the rest is cut
MAX_RECORD = 256 * 1024         # bytes of one encoded logging record (message + traceback)
END_MARK = b"\0\x1bliteq:task-end\0"
TASK_TAG = "\x1bliteq:task="      # then the task id and a NUL, at the start of a line
TASK_TAG_BYTES = TASK_TAG.encode()
CUT_MARKER = f" [... line cut at {MAX_LINE} bytes]"

STREAMS = ("stdout", "stderr", "log")


def tag_line(task_id: int, line: str) -> str:
    """One line (without its newline) as a task of a tagging child writes it."""
    return f"{TASK_TAG}{task_id}\0{line}\n"


def untag(raw: bytes) -> tuple[bytes, int | None]:
    """(raw without its task tag, the task id) of a tagged line; (raw, None) of any
    other line, or of one whose tag does not hold a number."""
    if not raw.startswith(TASK_TAG_BYTES):
        return raw, None
    end = raw.find(b"\0", len(TASK_TAG_BYTES))
    try:
        task_id = int(raw[len(TASK_TAG_BYTES):end])
    except ValueError:
        return raw, None
    return raw[end + 1:], task_id


def level_of(levelno: int) -> int:
    """The structlog level (a standard logging number) for a record's level."""
    for std in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= std:
            return std
    return logging.DEBUG


def dropped_lines(data: bytes, pos: int, skipping: bool) -> tuple[int, bool]:
    """(lines, tail_open) for data[pos:] discarded whole: each line counted once, those
    that end in it and the one left open; a line already being skipped (logged cut,
    or counted) is not counted again. tail_open: the last line has not ended."""
    ends = data.count(b"\n", pos)
    lines = ends
    if skipping and ends:
        lines -= 1
    tail_open = not data.endswith(b"\n")
    if tail_open and not (skipping and not ends):
        lines += 1
    return lines, tail_open
