"""The control channel's reading of a request line (liteqd.control_server) without a
socket: malformed lines, unknown ops and bad arguments get an error reply, never an
exception."""

import pytest

from liteqd.control_server import ControlError, ControlServer, parse_request


@pytest.mark.parametrize("line, error", [
    (b"not json", "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b"[" * 60_000, "malformed JSON"),
    (b"[1, 2]", "a request must be a JSON object"),
    (b'"ping"', "a request must be a JSON object"),
    (b"{}", 'missing "op"'),
    (b'{"op": 3}', 'missing "op"'),
    (b'{"op": null}', 'missing "op"'),
])
def test_a_line_that_is_not_a_request_is_refused_with_the_reason(line, error):
    with pytest.raises(ControlError, match=error):
        parse_request(line)


def test_a_request_gives_its_op_and_fields():
    assert parse_request(b'{"op": "scale", "size": 3}') == ("scale", {"op": "scale",
                                                                      "size": 3})


class _Pool:
    name = "default"


class _Host:
    """What the operations below use of a supervisor."""

    def __init__(self):
        self.pools = [_Pool()]
        self.scaled = []
        self.paused = set()

    def scale(self, name, size):
        if name != "default":
            raise KeyError(f"no pool named {name!r}")
        self.scaled.append((name, size))


@pytest.fixture
def server(tmp_path):
    server = ControlServer(str(tmp_path / "ctl.sock"))
    server._sup = _Host()   # served without binding its socket
    return server


def test_handle_line_answers_ping(server):
    reply = server.handle_line(b'{"op": "ping"}')
    assert reply["ok"] is True and reply["pong"] is True


def test_an_unknown_op_is_an_error_that_lists_the_known_ones(server):
    reply = server.handle_line(b'{"op": "explode"}')
    assert reply["ok"] is False
    assert reply["error"].startswith("unknown op 'explode'; known: ")
    assert "ping" in reply["error"] and "scale" in reply["error"]


def test_malformed_lines_get_error_replies(server):
    for line in (b"{", b"[]", b'{"op": 1}'):
        reply = server.handle_line(line)
        assert reply["ok"] is False and reply["error"]


@pytest.mark.parametrize("request_line", [
    b'{"op": "scale"}', b'{"op": "scale", "size": -1}', b'{"op": "scale", "size": true}',
    b'{"op": "scale", "size": 1.5}', b'{"op": "scale", "size": 1, "pool": 7}',
])
def test_scale_refuses_bad_arguments(server, request_line):
    reply = server.handle_line(request_line)
    assert reply["ok"] is False
    assert server.sup.scaled == []


def test_scale_reports_an_unknown_pool_and_serves_a_known_one(server):
    assert server.handle_line(b'{"op": "scale", "pool": "x", "size": 1}') == {
        "ok": False, "error": "no pool named 'x'"}
    assert server.handle_line(b'{"op": "scale", "size": 2}') == {
        "ok": True, "pool": "default", "size": 2}
    assert server.sup.scaled == [("default", 2)]


@pytest.mark.parametrize("request_line", [b'{"op": "pause"}', b'{"op": "pause", "queue": ""}',
                                          b'{"op": "resume", "queue": ["a"]}'])
def test_pause_and_resume_need_a_queue_name(server, request_line):
    reply = server.handle_line(request_line)
    assert reply["ok"] is False and '"queue" must be a non-empty string' in reply["error"]
