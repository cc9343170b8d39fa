"""The container log (JSON lines with stream and time) and the `logs` tool's selections, without root:
records are written with the supervisor's LogFile into a container directory made by hand."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cantainer_agent.runtime import logfile

pytestmark = pytest.mark.timeout(60)


def write(log: logfile.LogFile, stream: str, data: bytes, when: float) -> None:
    """LogFile.write with a chosen time (it stamps records with time.time())."""
    log_time = logfile.time.time
    logfile.time.time = lambda: when
    try:
        log.write(data, stream)
    finally:
        logfile.time.time = log_time


def test_records_round_trip_bytes_exactly_and_keep_their_stream(tmp_path):
    log = logfile.LogFile(str(tmp_path / logfile.NAME), 0)
    chunks = [("stdout", b"plain\n"), ("stderr", b"\xff\xfe broken utf-8\n"), ("stdout", "h\u00e9\n".encode()[:2]),
              ("stdout", "h\u00e9\n".encode()[2:]), ("stderr", b"no newline")]
    for stream, data in chunks:
        log.write(data, stream)
    lines = (tmp_path / logfile.NAME).read_bytes().splitlines()
    assert all(line.isascii() and set(json.loads(line)) == {"log", "stream", "time"} for line in lines)
    records = logfile.Reader(str(tmp_path / logfile.NAME)).read()
    assert [(r.stream, r.data) for r in records] == chunks
    assert logfile.read_all(str(tmp_path / logfile.NAME), ("stderr",)) == b"\xff\xfe broken utf-8\nno newline"


def test_time_stamps_are_rfc3339_utc_and_compare_as_strings():
    assert logfile.timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert logfile.timestamp(1700000000.25) == "2023-11-14T22:13:20.250000Z"
    assert logfile.timestamp(9.5) < logfile.timestamp(10.0) < logfile.timestamp(100.0)


def test_rotation_keeps_one_old_file_and_a_follower_crosses_it(tmp_path):
    path = str(tmp_path / logfile.NAME)
    log = logfile.LogFile(path, 2000)
    reader = logfile.Reader(path)
    seen = []
    for n in range(60):
        log.write(f"line {n}\n".encode(), "stdout")
        if n % 7 == 0:
            seen += reader.read()
    seen += reader.read()
    assert os.path.exists(path + ".1")
    assert b"".join(r.data for r in seen) == b"".join(f"line {n}\n".encode() for n in range(60))
    kept = logfile.read_all(path).decode().splitlines()
    assert kept[-1] == "line 59" and len(kept) < 60  # the oldest part is gone: the cap holds


def test_a_torn_last_record_waits_for_its_end(tmp_path):
    path = tmp_path / logfile.NAME
    whole = logfile.encode(b"hello\n", "stdout", 1.0)
    path.write_bytes(whole[:10])
    reader = logfile.Reader(str(path))
    assert reader.read() == []
    with open(path, "ab") as handle:
        handle.write(whole[10:])
    assert [r.data for r in reader.read()] == [b"hello\n"]


def test_a_legacy_raw_log_reads_as_stdout(tmp_path):
    (tmp_path / logfile.LEGACY_NAME).write_bytes(b"old\nformat\n")
    path = logfile.path_in(str(tmp_path))
    assert path.endswith("/log") and logfile.read_all(path) == b"old\nformat\n"
    assert logfile.read_all(path, ("stderr",)) == b""


TOOL = textwrap.dedent("""
    import sys
    from cantainer_agent.runtime import Runtime
    from cantainer_agent.tools import logs
    runtime = Runtime(sys.argv[1], sys.argv[2])
    streams = tuple(sys.argv[7].split(",")) if sys.argv[7] else ("stdout", "stderr")
    sys.exit(logs(runtime, "c1", tail=int(sys.argv[3]) if sys.argv[3] else None, since=sys.argv[4],
                  timestamps=sys.argv[5] == "1", streams=streams))
""")


@pytest.fixture
def container(tmp_path) -> Path:
    state = tmp_path / "state"
    (state / "c1").mkdir(parents=True)
    log = logfile.LogFile(str(state / "c1" / logfile.NAME), 0)
    write(log, "stdout", b"one\ntwo\n", 100.0)
    write(log, "stderr", b"warn\n", 101.0)
    write(log, "stdout", b"three\nfour", 102.0)
    write(log, "stdout", b" end\n", 103.0)
    return tmp_path


def tool(container: Path, tail: str = "", since: str = "", timestamps: bool = False, streams: str = ""):
    return subprocess.run([sys.executable, "-c", TOOL, str(container / "state"), str(container / "run"), tail,
                           since, "1" if timestamps else "0", "", streams], capture_output=True, timeout=30)


def test_logs_tool_writes_each_stream_to_its_own(container):
    done = tool(container)
    assert (done.stdout, done.stderr, done.returncode) == (b"one\ntwo\nthree\nfour end\n", b"warn\n", 0)


def test_logs_tool_filters_streams(container):
    assert tool(container, streams="stderr").stdout == b""
    assert tool(container, streams="stderr").stderr == b"warn\n"
    assert tool(container, streams="stdout").stderr == b""


def test_logs_tool_tail_counts_lines(container):
    done = tool(container, tail="3")
    assert (done.stdout, done.stderr) == (b"three\nfour end\n", b"warn\n")  # "four" + " end": one line
    assert tool(container, tail="0").stdout == b""
    assert tool(container, tail="1", streams="stderr").stderr == b"warn\n"


def test_logs_tool_since_and_time_stamps(container):
    done = tool(container, since=logfile.timestamp(101.5), timestamps=True)
    assert done.stdout == (f"{logfile.timestamp(102.0)} three\n{logfile.timestamp(102.0)} four end\n").encode()
    assert done.stderr == b""
