import os
import socket
import stat
import threading

import pytest

from cantainer_agent import protocol
from cantainer_agent.api.server import AfterReply, ApiServer


@pytest.fixture
def api(tmp_path):
    stopped = threading.Event()
    path = str(tmp_path / "agent.sock")
    srv = ApiServer(path, {
        "hello": lambda p: {"node": "h1"},
        "stop": lambda p: AfterReply({"stopping": True}, stopped.set),
    })
    srv.start()
    yield srv, path, stopped
    srv.stop()


def talk(path, *lines):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        f = s.makefile("rwb")
        out = []
        for line in lines:
            f.write(line)
            f.flush()
            out.append(protocol.decode_response(f.readline()))
        return out


def test_socket_mode_0600(api):
    _, path, _ = api
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_many_requests_on_one_connection(api):
    _, path, _ = api
    a, b, c = talk(path, protocol.encode_request(1, "hello"), b"garbage\n", protocol.encode_request(2, "nope"))
    assert a.result == {"node": "h1"}
    assert b.error.code == protocol.BAD_REQUEST and c.error.code == protocol.UNKNOWN_METHOD


def test_stop_replies_then_acts(api):
    _, path, stopped = api
    (resp,) = talk(path, protocol.encode_request(3, "stop"))
    assert resp.result == {"stopping": True}
    assert stopped.wait(2)


def test_oversized_line(api):
    _, path, _ = api
    (resp,) = talk(path, b"a" * (protocol.MAX_LINE + 1) + b"\n")
    assert resp.error.code == protocol.TOO_LARGE


def test_stale_socket_replaced_live_one_refused(tmp_path, api):
    srv, path, _ = api
    with pytest.raises(OSError, match="another agent"):
        ApiServer(path, {})
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # leaves the inode, nobody listening
    other = ApiServer(stale, {"hello": lambda p: 1})
    other.start()
    try:
        assert talk(stale, protocol.encode_request(1, "hello"))[0].result == 1
    finally:
        other.stop()
    assert not os.path.exists(stale)
