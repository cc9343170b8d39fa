"""tty / stdin containers and the attach socket (what `cantainer run -it` / `run -i` use).

Root only, like test_container.py. The test drives the shim's attach socket directly with the
framing of shim.encode_frame; the `attach` host-side tool is tested in a separate process below.
"""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import textwrap
import time

import pytest

from cantainer_agent.runtime import ContainerNotRunning, ContainerSpec
from cantainer_agent.runtime.attach import FRAME_DATA, FRAME_EOF, OutputFrames, encode_frame, encode_winsize

from .conftest import ALPINE_SHA256

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def spec(cid: str, command, **kwargs) -> ContainerSpec:
    kwargs.setdefault("name", cid)
    return ContainerSpec(id=cid, image=ALPINE_SHA256, command=command, **kwargs)


class Output:
    """What a client receives on the attach socket, decoded into its streams (1 stdout, 2 stderr)."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.frames = OutputFrames()
        self.streams = {1: b"", 2: b""}
        self.eof = False

    def receive(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
            return False
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
        for fd, payload in self.frames.feed(chunk):
            self.streams[fd] += payload
        return True


_OUTPUTS: dict = {}


def output(sock) -> Output:
    return _OUTPUTS.setdefault(id(sock), Output(sock))


def read_until(sock, needle: bytes, timeout: float = 10.0) -> bytes:
    """Read from the attach socket until *needle* appears on stdout (or EOF / timeout); return stdout."""
    out = output(sock)
    deadline = time.monotonic() + timeout
    while needle not in out.streams[1]:
        if out.eof or not out.receive(deadline):
            raise AssertionError(f"no {needle!r} (eof={out.eof}); got {out.streams!r}")
    return out.streams[1]


def read_to_eof(sock, timeout: float = 10.0, stream: int = 1) -> bytes:
    out = output(sock)
    deadline = time.monotonic() + timeout
    while not out.eof:
        assert out.receive(deadline), f"no EOF; got {out.streams!r}"
    _OUTPUTS.pop(id(sock), None)
    return out.streams[stream]


def test_tty_container_gets_a_terminal_size_input_and_exit_code(runtime, alpine):
    command = ["/bin/sh", "-c", "tty; stty size; read x; echo got $x; exit 4"]
    runtime.start(spec("tty1", command, tty=True, stdin=True), alpine)
    with runtime.attach("tty1") as sock:
        sock.sendall(encode_winsize(33, 101))
        out = read_until(sock, b"33 101\r\n")
        assert out.startswith(b"/dev/pts/0\r\n"), out  # the container's own devpts, \n -> \r\n
        sock.sendall(encode_frame(FRAME_DATA, b"hello\r"))
        out = read_until(sock, b"got hello\r\n")
        assert b"hello\r\n" in out  # echoed by the container's line discipline
        read_to_eof(sock)
    info = runtime.wait("tty1", timeout=10)
    assert info.exit_code == 4
    log = runtime.read_logs("tty1")
    assert b"/dev/pts/0\r\n33 101\r\n" in log and b"got hello\r\n" in log
    assert not os.path.exists(runtime.attach_path("tty1"))


def test_ctrl_c_is_sigint_to_the_foreground_process_and_resize_applies(runtime, alpine):
    script = "trap 'echo INT; exit 9' INT; echo ready; stty size; while :; do sleep 0.05; done"
    runtime.start(spec("tty2", ["/bin/sh", "-c", script], tty=True, stdin=True), alpine)
    with runtime.attach("tty2") as sock:
        sock.sendall(encode_winsize(24, 80))
        read_until(sock, b"24 80\r\n")
        sock.sendall(encode_winsize(50, 132))
        time.sleep(0.2)
        sock.sendall(encode_frame(FRAME_DATA, b"\x03"))
        read_until(sock, b"INT\r\n")
        read_to_eof(sock)
    assert runtime.wait("tty2", timeout=10).exit_code == 9


def test_resize_reaches_a_running_program(runtime, alpine):
    script = "read a; stty size; read b; stty size"
    runtime.start(spec("tty3", ["/bin/sh", "-c", script], tty=True, stdin=True), alpine)
    with runtime.attach("tty3") as sock:
        sock.sendall(encode_winsize(24, 80))
        sock.sendall(encode_frame(FRAME_DATA, b"\r"))
        read_until(sock, b"24 80\r\n")
        sock.sendall(encode_winsize(50, 132) + encode_frame(FRAME_DATA, b"\r"))
        read_until(sock, b"50 132\r\n")
        read_to_eof(sock)
    assert runtime.wait("tty3", timeout=10).exit_code == 0


def test_ctrl_d_ends_input_on_a_tty(runtime, alpine):
    runtime.start(spec("tty4", ["/bin/sh", "-c", "cat; echo after; exit 5"], tty=True, stdin=True), alpine)
    with runtime.attach("tty4") as sock:
        sock.sendall(encode_winsize(24, 80) + encode_frame(FRAME_DATA, b"line\r"))
        read_until(sock, b"line\r\nline\r\n")  # echo, then cat's copy
        sock.sendall(encode_frame(FRAME_DATA, b"\x04"))
        read_until(sock, b"after\r\n")
        read_to_eof(sock)
    assert runtime.wait("tty4", timeout=10).exit_code == 5


def test_stdin_pipe_without_tty_keeps_stdout_and_stderr_apart(runtime, alpine):
    command = ["/bin/sh", "-c", "[ -t 0 ] && echo tty; cat; echo done >&2; exit 3"]
    runtime.start(spec("in1", command, stdin=True), alpine)
    with runtime.attach("in1") as sock:
        sock.sendall(encode_frame(FRAME_DATA, b"abc\n") + encode_frame(FRAME_DATA, b"def\n"))
        sock.sendall(encode_frame(FRAME_EOF))
        received = output(sock)
        out = read_to_eof(sock)
        err = received.streams[2]
    assert (out, err) == (b"abc\ndef\n", b"done\n")
    assert runtime.wait("in1", timeout=10).exit_code == 3
    assert runtime.read_logs("in1", ("stdout",)) == b"abc\ndef\n"
    assert runtime.read_logs("in1", ("stderr",)) == b"done\n"


def test_early_output_waits_for_the_first_client(runtime, alpine):
    runtime.start(spec("hold", ["/bin/echo", "first words"], tty=True), alpine)
    time.sleep(0.5)  # the command has not run yet: it is held until we attach
    assert runtime.inspect("hold").running
    with runtime.attach("hold") as sock:
        sock.sendall(encode_winsize(24, 80))
        assert read_to_eof(sock) == b"first words\r\n"
    assert runtime.wait("hold", timeout=10).exit_code == 0


def test_without_a_client_the_container_runs_after_the_wait(runtimes, alpine):
    runtime = runtimes.make(attach_wait=0.2)
    runtime.start(spec("alone", ["/bin/sh", "-c", "echo hi; exit 6"], tty=True, stdin=True), alpine)
    info = runtime.wait("alone", timeout=10)
    assert info.exit_code == 6
    assert runtime.read_logs("alone") == b"hi\r\n"


def test_exec_failure_after_attach_is_reported_to_the_client(runtime, alpine):
    runtime.start(spec("bad", ["/nonexistent"], tty=True, stdin=True), alpine)
    with runtime.attach("bad") as sock:
        sock.sendall(encode_winsize(24, 80))
        out = read_to_eof(sock)
    assert b"/nonexistent" in out and b"not found" in out
    assert runtime.wait("bad", timeout=10).exit_code == 127


def test_attach_refused_for_plain_and_exited_containers(runtime, alpine):
    runtime.start(spec("plain", ["/bin/true"]), alpine)
    with pytest.raises(ContainerNotRunning):
        runtime.attach("plain")
    assert not os.path.exists(runtime.attach_path("plain"))
    runtime.wait("plain", timeout=10)


ATTACH_TOOL = textwrap.dedent("""
    import sys
    from cantainer_agent.runtime import Runtime
    from cantainer_agent.tools import attach
    runtime = Runtime(sys.argv[1], sys.argv[2], sys.argv[3])
    sys.exit(attach(runtime, sys.argv[4]))
""")


def test_attach_tool_on_a_pty(runtimes, alpine):
    """The host-side `attach` tool as the CLI runs it over SSH: its stdio is a pty (sshd's)."""
    runtime = runtimes.make()
    runtime.start(spec("tool", ["/bin/sh", "-c", "stty size; read x; echo got $x; exit 7"],
                        tty=True, stdin=True), alpine)
    pid, fd = pty.fork()
    if pid == 0:
        try:
            import fcntl
            import struct
            import termios

            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.execv(sys.executable, [sys.executable, "-c", ATTACH_TOOL, runtimes.state_dir, runtimes.run_dir,
                                      runtimes.cgroup_parent, "tool"])
        finally:
            os._exit(99)
    out = b""
    try:
        deadline = time.monotonic() + 15
        sent = False
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.2)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if b"40 120" in out and not sent:
                os.write(fd, b"yes\r")  # raw mode on the tool's side: \r travels as is
                sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"40 120\r\n" in out and b"got yes\r\n" in out, out
    assert os.waitstatus_to_exitcode(status) == 7


def test_attach_tool_with_pipes(runtimes, alpine):
    runtime = runtimes.make()
    runtime.start(spec("toolp", ["/bin/sh", "-c", "tr a-z A-Z; echo oops >&2; exit 2"], stdin=True), alpine)
    done = subprocess.run([sys.executable, "-c", ATTACH_TOOL, runtimes.state_dir, runtimes.run_dir,
                           runtimes.cgroup_parent, "toolp"], input=b"hello\n", capture_output=True, timeout=20)
    assert (done.stdout, done.stderr, done.returncode) == (b"HELLO\n", b"oops\n", 2), done


def test_stop_while_held_records_the_exit(runtime, alpine):
    runtime.start(spec("held", ["/bin/echo", "never"], tty=True, stdin=True), alpine)
    info = runtime.stop("held", timeout=0.2)
    assert info.state == "exited" and info.exit_code == 137
    assert b"never" not in runtime.read_logs("held")


def test_tty_on_the_cgroup_v2_code_path(runtimes, alpine, v2_layout):
    """No warm init there: init is forked at request time and gets the pipes/socket directly."""
    runtime = runtimes.make(cgroup_layout=v2_layout)
    runtime.start(spec("v2tty", ["/bin/sh", "-c", "tty; stty size; read x; exit $x"], tty=True, stdin=True), alpine)
    with runtime.attach("v2tty") as sock:
        sock.sendall(encode_winsize(12, 34))
        read_until(sock, b"/dev/pts/0\r\n12 34\r\n")
        sock.sendall(encode_frame(FRAME_DATA, b"8\r"))
        read_to_eof(sock)
    assert runtime.wait("v2tty", timeout=10).exit_code == 8
    runtime.remove("v2tty")
    os.rmdir(os.path.join(v2_layout.v2_mount, runtimes.cgroup_parent))
