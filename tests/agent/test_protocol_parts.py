"""Results in parts: however large a status or ps gets, no line comes near MAX_LINE when the client
takes parts; without them a result stays one line, as before."""
from __future__ import annotations

import json

import pytest

from cantainer_agent import protocol


def status_like(containers: int) -> dict:
    return {"node": "h1", "nodes": [{"name": f"h{i}"} for i in range(30)], "networks": [{"cidr": "10.0.0.0/16"}],
            "containers": [{"name": f"c-{i:05d}", "command": ["sleep", "1000000"], "env": {"K": "v" * 200},
                            "ip": f"10.0.{i // 250}.{i % 250 + 1}"} for i in range(containers)]}


def decode(data: bytes):
    lines = data.splitlines(keepends=True)
    response = protocol.decode_response(lines[0])
    if response.more is None:
        assert len(lines) == 1
        return response.result, lines
    pieces = [protocol.decode_part(line) for line in lines[1:]]
    assert pieces[-1] is None and None not in pieces[:-1]
    return protocol.join_parts(response, pieces[:-1]), lines


@pytest.mark.parametrize("result", [status_like(5000), [{"name": f"c-{i}", "x": "y" * 300} for i in range(5000)]])
def test_a_large_result_in_parts_comes_back_whole_and_no_line_is_long(result):
    data = protocol.encode_result(7, result, parts=True)
    whole, lines = decode(data)
    assert whole == result and len(lines) > 3
    assert max(len(line) for line in lines) <= protocol.PART_BYTES + 1024
    assert len(data) > protocol.MAX_LINE  # one line could not have carried it


def test_a_small_result_is_one_line_either_way():
    result = status_like(3)
    assert protocol.encode_result(1, result, parts=True) == protocol.encode_result(1, result)


def test_without_parts_a_result_over_the_limit_is_an_error_as_before():
    response = protocol.decode_response(protocol.encode_result(1, status_like(5000)))
    assert not response.ok and response.error.code == protocol.TOO_LARGE


def test_dispatch_sends_parts_only_to_a_client_that_asked():
    handlers = {"status": lambda params: status_like(5000)}
    asked = protocol.dispatch(protocol.encode_request(3, "status", {}, parts=True), handlers)[0]
    assert decode(asked)[0] == status_like(5000)
    plain = protocol.dispatch(protocol.encode_request(3, "status", {}), handlers)[0]
    assert plain.count(b"\n") == 1 and protocol.decode_response(plain).error.code == protocol.TOO_LARGE


@pytest.mark.parametrize("line, message", [
    (b'{"v":1,"id":1}\n', '"items"'),
    (b'{"v":1,"id":1,"items":{}}\n', '"items"'),
    (b'{"v":9,"id":1,"end":true}\n', "version"),
])
def test_a_malformed_part_is_a_protocol_error(line, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode_part(line)


def test_parts_must_be_a_boolean():
    line = json.dumps({"v": 1, "id": 1, "method": "status", "params": {}, "parts": "yes"}).encode() + b"\n"
    with pytest.raises(protocol.ProtocolError, match='"parts"'):
        protocol.decode_request(line)
