"""The supervisor's reading of a child's output pipes (liteqd.output_pump.Pump), with
real pipes and stand-ins for the supervisor and the child: lines, task ends, cut
lines and tagged lines become the right events."""

import json
import logging
import os
from dataclasses import dataclass, field

import pytest

from liteqd.output_pump import Pump
from liteqd.output_wire import CUT_MARKER, END_MARK, MAX_LINE, tag_line


class _Log:
    def __init__(self):
        self.events = []

    def log(self, level, event, **fields):
        self.events.append((level, event, fields))

    def warning(self, event, **fields):
        self.log(logging.WARNING, event, **fields)


class _Host:
    def __init__(self):
        self.log = _Log()
        self.watched = {}

    def register_fd(self, fd, handler):
        self.watched[fd] = handler

    def unregister_fd(self, fd):
        self.watched.pop(fd, None)


@dataclass
class _Run:
    id: int
    name: str


@dataclass
class _Pool:
    async_slots: int = 1


@dataclass
class _Child:
    pid: int = 1234
    pool: _Pool = field(default_factory=_Pool)
    inflight: list = field(default_factory=list)

    @property
    def running(self):
        return self.inflight[0] if self.inflight else None

    def started_runs(self):
        return self.inflight[:1]


class _Pipes(list):
    """Three (read, write) pairs; `closed` holds the fds a test closed itself."""

    def __init__(self):
        super().__init__(os.pipe() for _ in range(3))
        self.closed = set()


@pytest.fixture
def pipes():
    fds = _Pipes()
    yield fds
    for r, w in fds:
        for fd in (r, w):
            if fd not in fds.closed:
                os.close(fd)


def _pump(pipes, child):
    host = _Host()
    pump = Pump(host, child, [r for r, _ in pipes])
    return host, pump


def _outputs(host):
    return [(e, f.get("stream"), f.get("text"), f.get("task_id"))
            for _, e, f in host.log.events if e in ("task.output", "child.output")]


def test_lines_go_to_the_running_task_and_a_mark_ends_its_output(pipes):
    child = _Child(inflight=[_Run(1, "first"), _Run(2, "second")])
    host, pump = _pump(pipes, child)
    assert set(host.watched) == {r for r, _ in pipes}
    os.write(pipes[0][1], b"one\ntwo without end" + END_MARK + b"three\n")
    pump.drain()
    assert _outputs(host) == [("task.output", "stdout", "one", 1),
                              ("task.output", "stdout", "two without end", 1),
                              ("task.output", "stdout", "three", 2)]


def test_output_after_the_results_were_handled_still_goes_to_its_task(pipes):
    child = _Child(inflight=[_Run(1, "first")])
    host, pump = _pump(pipes, child)
    pump.task_done()          # its result came first; it leaves inflight
    child.inflight.clear()
    os.write(pipes[1][1], b"late\n" + END_MARK + b"no task\n")
    pump.drain()
    assert _outputs(host) == [("task.output", "stderr", "late", 1),
                              ("child.output", "stderr", "no task", None)]


def test_a_long_line_is_logged_cut_and_its_rest_discarded(pipes):
    child = _Child(inflight=[_Run(1, "t")])
    host, pump = _pump(pipes, child)
    os.write(pipes[0][1], b"x" * (MAX_LINE + 100))
    pump.drain()
    os.write(pipes[0][1], b"y" * 50 + b"\nnext\n")
    pump.drain()
    cut = [f for _, e, f in host.log.events if e == "task.output" and f.get("cut")]
    assert len(cut) == 1 and cut[0]["text"] == "x" * MAX_LINE + CUT_MARKER
    assert _outputs(host)[-1] == ("task.output", "stdout", "next", 1)


def test_a_logging_record_is_logged_at_its_level(pipes):
    child = _Child(inflight=[_Run(3, "t")])
    host, pump = _pump(pipes, child)
    rec = {"level": logging.ERROR, "logger": "app", "message": "boom"}
    os.write(pipes[2][1], json.dumps(rec).encode() + b"\nnot json\n")
    pump.drain()
    logged = [(lvl, f.get("logger"), f.get("message"), f.get("task_id"))
              for lvl, e, f in host.log.events if e == "task.log"]
    assert logged == [(logging.ERROR, "app", "boom", 3), (logging.WARNING, None, "not json", 3)]


def test_in_a_child_of_many_coroutines_a_tagged_line_goes_to_the_task_it_names(pipes):
    child = _Child(pool=_Pool(async_slots=4), inflight=[_Run(5, "a"), _Run(6, "b")])
    host, pump = _pump(pipes, child)
    os.write(pipes[0][1], (tag_line(6, "from b") + tag_line(5, "from a")).encode())
    pump.drain()
    events = [(f["text"], f["task_id"], f["name"]) for _, e, f in host.log.events
              if e == "task.output"]
    assert events == [("from b", 6, "b"), ("from a", 5, "a")]


def test_close_logs_a_held_line_and_stops_watching_the_pipes(pipes):
    child = _Child(inflight=[_Run(1, "t")])
    host, pump = _pump(pipes, child)
    os.write(pipes[0][1], b"unfinished")
    for _, w in pipes:
        os.close(w)
    pump.close()
    pipes.closed.update(fd for pair in pipes for fd in pair)
    assert _outputs(host) == [("task.output", "stdout", "unfinished", 1)]
    assert host.watched == {}
