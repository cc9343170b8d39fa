import json

import pytest

from cantainer_agent import protocol
from cantainer_agent.protocol import ProtocolError


def test_request_round_trip():
    line = protocol.encode_request(5, "status", {"watch": True})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "id": 5, "method": "status", "params": {"watch": True}}
    req = protocol.decode_request(line)
    assert (req.id, req.method, req.params) == (5, "status", {"watch": True})


def test_missing_params_default_to_empty():
    assert protocol.decode_request(b'{"v":1,"id":1,"method":"hello"}').params == {}


def test_result_and_error_round_trip():
    ok = protocol.decode_response(protocol.encode_result(3, {"a": [1, 2]}))
    assert ok.ok and ok.id == 3 and ok.unwrap() == {"a": [1, 2]}
    err = protocol.decode_response(protocol.encode_error(4, protocol.NOT_LEADER, "ask n2"))
    assert not err.ok and err.id == 4
    with pytest.raises(ProtocolError) as info:
        err.unwrap()
    assert info.value.code == "not_leader" and info.value.message == "ask n2"


@pytest.mark.parametrize(
    "line, code",
    [
        (b"", protocol.BAD_REQUEST),
        (b"not json", protocol.BAD_REQUEST),
        (b"\xff\xfe", protocol.BAD_REQUEST),
        (b"[1,2]", protocol.BAD_REQUEST),
        (b'{"id":1,"method":"hello"}', protocol.BAD_REQUEST),
        (b'{"v":"1","id":1,"method":"hello"}', protocol.BAD_REQUEST),
        (b'{"v":2,"id":1,"method":"hello"}', protocol.UNSUPPORTED_VERSION),
        (b'{"v":1,"id":-1,"method":"hello"}', protocol.BAD_REQUEST),
        (b'{"v":1,"id":true,"method":"hello"}', protocol.BAD_REQUEST),
        (b'{"v":1,"id":1.5,"method":"hello"}', protocol.BAD_REQUEST),
        (b'{"v":1,"id":1,"method":"Hello World"}', protocol.BAD_REQUEST),
        (b'{"v":1,"id":1,"method":"hello","params":[]}', protocol.BAD_REQUEST),
        (b'{"v":1,"id":1,"method":"hello","extra":1}', protocol.BAD_REQUEST),
        (b'{"v":1,"id":1,"method":"hello","params":{"x":NaN}}', protocol.BAD_REQUEST),
        (b"[" * 100000, protocol.BAD_REQUEST),
    ],
)
def test_bad_requests_are_protocol_errors(line, code):
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(line)
    assert info.value.code == code


def test_oversized_line():
    big = b'{"v":1,"id":1,"method":"hello","params":{"x":"' + b"a" * protocol.MAX_LINE + b'"}}'
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(big)
    assert info.value.code == protocol.TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        protocol.encode_request(1, "hello", {"x": "a" * protocol.MAX_LINE})
    assert info.value.code == protocol.TOO_LARGE


def test_oversized_result_becomes_error_line():
    line = protocol.encode_result(9, "a" * protocol.MAX_LINE)
    resp = protocol.decode_response(line)
    assert not resp.ok and resp.id == 9 and resp.error.code == protocol.TOO_LARGE


def test_unserialisable_result_becomes_internal_error():
    resp = protocol.decode_response(protocol.encode_result(1, {"x": object()}))
    assert resp.error.code == protocol.INTERNAL


def test_encode_request_validates():
    with pytest.raises(ProtocolError):
        protocol.encode_request(-1, "hello")
    with pytest.raises(ProtocolError):
        protocol.encode_request(1, "no spaces")


def test_malformed_responses():
    for line in (b'{"v":1,"id":1}', b'{"v":1,"id":1,"ok":false}', b'{"v":1,"id":1,"ok":true}',
                 b'{"v":1,"id":"x","ok":true,"result":1}'):
        with pytest.raises(ProtocolError):
            protocol.decode_response(line)


class TestDispatch:
    handlers = {
        "hello": lambda p: {"hi": p.get("name", "?")},
        "boom": lambda p: 1 / 0,
        "busy": lambda p: (_ for _ in ()).throw(ProtocolError(protocol.UNAVAILABLE, "starting")),
    }

    def run(self, line):
        out, req = protocol.dispatch(line, self.handlers)
        assert out.endswith(b"\n")
        return protocol.decode_response(out), req

    def test_success(self):
        resp, req = self.run(protocol.encode_request(1, "hello", {"name": "x"}))
        assert resp.ok and resp.result == {"hi": "x"} and req.method == "hello"

    def test_unknown_method_keeps_id(self):
        resp, _ = self.run(protocol.encode_request(2, "nope"))
        assert resp.error.code == protocol.UNKNOWN_METHOD and resp.id == 2
        assert "hello" in resp.error.message

    def test_handler_exception_is_internal(self):
        resp, _ = self.run(protocol.encode_request(3, "boom"))
        assert resp.error.code == protocol.INTERNAL and "ZeroDivisionError" in resp.error.message

    def test_handler_protocol_error_passes_through(self):
        resp, _ = self.run(protocol.encode_request(4, "busy"))
        assert (resp.error.code, resp.error.message) == (protocol.UNAVAILABLE, "starting")

    def test_garbage_gets_null_id(self):
        resp, req = self.run(b"\x80garbage")
        assert req is None and resp.id is None and resp.error.code == protocol.BAD_REQUEST

    def test_wrong_version_keeps_id(self):
        resp, _ = self.run(b'{"v":7,"id":11,"method":"hello"}')
        assert resp.id == 11 and resp.error.code == protocol.UNSUPPORTED_VERSION

    def test_pickle_bytes_are_just_bad_requests(self):
        import pickle

        resp, _ = self.run(pickle.dumps({"a": 1}))
        assert resp.error.code == protocol.BAD_REQUEST


def test_a_session_travels_in_the_envelope_and_reaches_the_handler():
    from cantainer_agent import protocol

    line = protocol.encode_request(7, "network.rm", {"cidr": "10.0.0.0/24"}, {"client": "cli:x", "seq": 3})
    seen = {}
    response, request = protocol.dispatch(line, {"network.rm": lambda params: seen.update(params) or {}})
    assert request.session == {"client": "cli:x", "seq": 3}
    assert seen == {"cidr": "10.0.0.0/24", "session": {"client": "cli:x", "seq": 3}}
    bad = line.replace(b'"seq":3', b'"seq":-3')
    assert protocol.decode_response(protocol.dispatch(bad, {})[0]).error.code == protocol.BAD_REQUEST


def test_every_agent_error_maps_to_the_code_a_client_can_act_on():
    from cantainer_agent import protocol
    from cantainer_agent.api.errors import to_protocol
    from cantainer_agent.consensus import CommandRejected, NotSubmitted, OutcomeUnknown, RaftError
    from cantainer_agent.errors import AlreadyExists, Conflict, NotFound, StateError
    from cantainer_agent.runtime import ContainerNotFound, SpecError

    cases = [
        (NotFound("x"), protocol.NOT_FOUND), (AlreadyExists("x"), protocol.ALREADY_EXISTS),
        (Conflict("x"), protocol.CONFLICT), (StateError("x"), protocol.INVALID),
        (CommandRejected("x", "conflict"), protocol.CONFLICT), (NotSubmitted("x"), protocol.UNAVAILABLE),
        (OutcomeUnknown("x"), protocol.OUTCOME_UNKNOWN), (RaftError("x"), protocol.UNAVAILABLE),
        (ContainerNotFound("x"), protocol.NOT_FOUND), (SpecError("x"), protocol.INVALID),
    ]
    assert [to_protocol(error).code for error, _ in cases] == [code for _, code in cases]
    assert all(code in protocol.ERROR_CODES for _, code in cases)
