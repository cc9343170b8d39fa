import errno
import json
import socket
import time

import pytest

from cantainer_agent.join import wire
from cantainer_agent.join.client import JoinError, join_cluster
from cantainer_agent.join.server import JoinServer
from cantainer_agent.join.wire import AuthError, derive_key, open_envelope, request, seal

SECRET = b"s" * 32


def test_seal_open_round_trip():
    key = derive_key(SECRET)
    line, nonce = seal(key, "req", {"method": "ping", "params": {}})
    body, got_nonce = open_envelope(key, line, "req")
    assert body == {"method": "ping", "params": {}} and got_nonce == nonce


def test_tampering_and_wrong_key_rejected():
    key = derive_key(SECRET)
    line, _ = seal(key, "req", {"method": "join", "params": {"node": "a"}})
    env = json.loads(line)
    env["body"] = env["body"].replace('"a"', '"b"')
    with pytest.raises(AuthError):
        open_envelope(key, json.dumps(env).encode() + b"\n", "req")
    with pytest.raises(wire.BadMac):
        open_envelope(derive_key(b"t" * 32), line, "req")
    with pytest.raises(AuthError):  # a request is not a response
        open_envelope(key, line, "resp")


def test_response_bound_to_request_nonce():
    key = derive_key(SECRET)
    line, _ = seal(key, "resp", {"ok": True, "result": 1}, re_="a" * 32)
    assert open_envelope(key, line, "resp", re_="a" * 32)[0]["result"] == 1
    with pytest.raises(AuthError):
        open_envelope(key, line, "resp", re_="b" * 32)


def test_clock_skew():
    key = derive_key(SECRET)
    line, _ = seal(key, "req", {"method": "ping"}, now=time.time() - 120)
    with pytest.raises(wire.SkewError):
        open_envelope(key, line, "req")


@pytest.mark.parametrize("line", [b"", b"garbage\n", b"\x80\x02}q\x00.\n", b"[1]\n", b'{"v":1}\n', b"{" * 5000 + b"\n"])
def test_garbage_rejected(line):
    with pytest.raises(AuthError):
        open_envelope(derive_key(SECRET), line, "req")


def test_secret_separated_from_raft_password():
    assert derive_key(SECRET) != SECRET and len(derive_key(SECRET)) == 32


@pytest.fixture
def server():
    calls = []

    def handle(method, params):
        calls.append((method, params))
        if params.get("mode") == "redirect":
            return {"ok": False, "error": {"code": "not_leader", "message": "no", "leader_join": params["to"]}}
        if params.get("mode") == "conflict":
            return {"ok": False, "error": {"code": "conflict", "message": "name taken"}}
        return {"ok": True, "result": {"members": ["127.0.0.1:1"], "echo": params}}

    srv = JoinServer("127.0.0.1", 0, SECRET, handle)
    srv.start()
    yield srv, calls
    srv.stop()


def addr(srv):
    host, port = srv.address
    return f"{host}:{port}"


def test_server_answers_signed_requests(server):
    srv, calls = server
    body = request(addr(srv), SECRET, "join", {"node": "x"})
    assert body["ok"] and body["result"]["echo"] == {"node": "x"}
    assert calls == [("join", {"node": "x"})]


def test_server_drops_garbage_and_survives(server):
    srv, calls = server
    host, port = srv.address
    for payload in (b"\x80\x04\x95garbage-pickle\n", b"x" * (wire.MAX_JOIN_LINE + 10), b"{}\n"):
        with socket.create_connection((host, port), timeout=5) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b""
            except OSError as exc:  # the server may drop an oversized line before reading it all (RST)
                assert exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN), exc
    assert calls == []
    assert request(addr(srv), SECRET, "ping", {})["ok"]


def test_wrong_secret_fails_fast(server):
    srv, calls = server
    sleeps = []
    with pytest.raises(JoinError, match="secret differs"):
        join_cluster([addr(srv)], b"w" * 32, {"node": "x"}, deadline=20, sleep=sleeps.append)
    assert sleeps == [] and calls == []  # given up after the first answer, no retry round: fails fast


def test_replayed_request_dropped(server):
    srv, calls = server
    line, _ = seal(derive_key(SECRET), "req", {"method": "ping", "params": {}})
    answers = []
    for _ in range(2):
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(line)
            answers.append(s.recv(65536))
    assert answers[0] and answers[1] == b"" and len(calls) == 1


def test_join_cluster_follows_redirect_to_leader():
    def follower(method, params):
        return {"ok": False, "error": {"code": "not_leader", "message": "ask the leader", "leader_join": leader_addr}}

    def leader(method, params):
        return {"ok": True, "result": {"members": ["127.0.0.1:1", params["raft_addr"]], "already_member": False}}

    lsrv = JoinServer("127.0.0.1", 0, SECRET, leader)
    fsrv = JoinServer("127.0.0.1", 0, SECRET, follower)
    leader_addr = addr(lsrv)
    lsrv.start()
    fsrv.start()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    nobody = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there: the first seed refuses
    try:
        result = join_cluster([nobody, addr(fsrv)], SECRET, {"raft_addr": "127.0.0.1:2"}, deadline=5)
    finally:
        lsrv.stop()
        fsrv.stop()
    assert result["members"] == ["127.0.0.1:1", "127.0.0.1:2"] and result["via"] == leader_addr
    # what the joiner logs of how it went: 3 requests (dead seed, follower, leader), and why the first two failed
    assert result["attempts"] == 3 and 0 < result["seconds"] < 5
    assert set(result["errors"]) == {nobody, addr(fsrv)} and "refused" in result["errors"][nobody].lower()
    assert result["errors"][addr(fsrv)].startswith("not_leader")


def test_fatal_answer_stops_at_once(server):
    srv, calls = server
    with pytest.raises(JoinError, match="name taken"):
        join_cluster([addr(srv)], SECRET, {"mode": "conflict"}, deadline=20)
    assert len(calls) == 1


def test_unreachable_seeds_bounded():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sleeps = []
    with pytest.raises(JoinError) as info:
        join_cluster([f"127.0.0.1:{port}"], SECRET, {}, deadline=30, rounds=3, sleep=sleeps.append)
    assert len(sleeps) == 2 and sleeps == sorted(sleeps)  # bounded: 3 rounds, backing off between them
    assert f"127.0.0.1:{port}" in str(info.value) and "refused" in str(info.value).lower()


def test_no_seeds():
    with pytest.raises(JoinError, match="no seeds"):
        join_cluster([], SECRET, {})


# -- strangers cannot starve the join port (issue 22: slowloris) ----------------------------------------
def connect_from(source: str, srv) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(srv.address)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed *sock* (EOF or reset); never blocks long."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def test_a_trickling_connection_is_closed_at_the_deadline_not_kept_alive(server):
    from cantainer_agent.join.server import DEADLINE

    srv, calls = server
    sock = connect_from("127.0.0.1", srv)
    sends = 0
    try:
        while not closed_by_server(sock) and sends < 6 * DEADLINE:  # one byte per 0.5 s kept a slot forever
            sock.sendall(b"{")
            sends += 1
            time.sleep(0.5)
    except OSError:
        pass
    finally:
        sock.close()
    assert sends < 6 * DEADLINE, "the server kept a connection that never completed its line"
    assert calls == []


def test_slow_strangers_from_one_address_leave_room_for_everyone_else(server):
    from cantainer_agent.join.server import MAX_CONNECTIONS, PER_SOURCE

    srv, calls = server
    slow = [connect_from("127.0.0.1", srv) for _ in range(MAX_CONNECTIONS + 8)]
    try:
        for sock in slow:
            sock.sendall(b"{")  # every one of them started a request
        # beyond PER_SOURCE, the server closes them unread; the rest are held until their deadline
        assert wait_until(lambda: sum(closed_by_server(s) for s in slow) >= len(slow) - PER_SOURCE)
        body = request_from("127.0.0.2", srv, "ping")  # sent while 127.0.0.1 still holds its share
        assert body["ok"], body
    finally:
        for sock in slow:
            sock.close()


def test_members_have_slots_strangers_cannot_take():
    from cantainer_agent.join.server import MAX_CONNECTIONS, PER_SOURCE

    def handle(method, params):
        return {"ok": True, "result": {}}

    srv = JoinServer("127.0.0.1", 0, SECRET, handle, is_member=lambda address: address == "127.0.0.3")
    srv.start()
    holders = []
    try:
        for n in range(MAX_CONNECTIONS // PER_SOURCE):  # strangers on many addresses fill their share
            for _ in range(PER_SOURCE):
                sock = connect_from(f"127.0.0.{10 + n}", srv)
                sock.sendall(b"{")
                holders.append(sock)
        assert wait_until(lambda: request_from("127.0.0.30", srv, "ping", check=False) is None)  # refused
        assert request_from("127.0.0.3", srv, "ping")["ok"]  # a member still gets in
    finally:
        for sock in holders:
            sock.close()
        srv.stop()


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def request_from(source: str, srv, method: str, check: bool = True):
    """A signed request sent from *source*; the answer body, or None when the server closed unread."""
    key = derive_key(SECRET)
    line, nonce = seal(key, "req", {"method": method, "params": {}})
    with connect_from(source, srv) as sock:
        try:
            sock.sendall(line)
            answer = wire.read_line(sock, wire.MAX_JOIN_LINE)
        except OSError:
            answer = b""
    if not answer:
        assert not check, f"the server refused {source}"
        return None
    return open_envelope(key, answer, "resp", re_=nonce)[0]
