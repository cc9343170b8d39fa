"""Stream a remote command's stdio to this terminal — plain pipes, or a real interactive TTY.

With a TTY the local terminal goes raw (so Ctrl-C, Ctrl-D and arrow keys travel to the remote
side as bytes), the remote PTY follows window resizes (SIGWINCH), and the terminal is restored
whatever happens. Without one, stdout and stderr are copied exactly, byte for byte. The command
runs on an SSH channel of our own (``ssh.Connection``) or of the connection process
(``persist.client.ProxyConnection.stream``, which relays it as frames: ``relay_frames``).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty

from cantainer.persist import wire


@contextlib.contextmanager
def raw_terminal(fd: int):
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _copy_out(stream, target) -> None:
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        target.write(chunk)
        target.flush()


async def _copy_stdin(process) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            process.stdin.write_eof()
            return
        process.stdin.write(chunk)


def terminal_size() -> tuple[int, int]:
    size = os.get_terminal_size(sys.stdout.fileno())
    return size.columns, size.lines


async def relay_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, interactive: bool,
                       use_tty: bool) -> int:
    """Our side of a command the connection process runs (persist/wire.py frames): its stdout and
    stderr to ours, our stdin (with -i) and window size (with -t) to it; its exit status."""
    loop = asyncio.get_running_loop()

    async def pump_stdin() -> None:
        reader_in = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader_in), sys.stdin)
        while chunk := await reader_in.read(65536):
            writer.write(wire.frame(wire.STDIN, chunk))
            await writer.drain()
        writer.write(wire.frame(wire.STDIN))

    def resize() -> None:
        cols, rows = terminal_size()
        writer.write(wire.frame(wire.RESIZE, json.dumps({"cols": cols, "rows": rows}).encode()))

    stdin_task = asyncio.ensure_future(pump_stdin()) if interactive else None
    if use_tty:
        loop.add_signal_handler(signal.SIGWINCH, resize)
    status = 255
    try:
        with raw_terminal(sys.stdin.fileno()) if use_tty else contextlib.nullcontext():
            outputs = {wire.STDOUT: sys.stdout.buffer, wire.STDERR: sys.stderr.buffer}
            while (item := await wire.read_frame(reader)) is not None:
                kind, payload = item
                if kind == wire.EXIT:
                    status = json.loads(payload)["exit_status"]
                    break
                if kind in outputs:
                    outputs[kind].write(payload)
                    outputs[kind].flush()
    finally:
        if use_tty:
            loop.remove_signal_handler(signal.SIGWINCH)
        if stdin_task:
            stdin_task.cancel()
    return status


async def stream_command(connection, argv: list[str], interactive: bool, use_tty: bool) -> int:
    """Run argv on the host with our stdio attached; return its exit status."""
    if hasattr(connection, "stream"):  # through the connection process
        return await connection.stream(argv, interactive, use_tty)
    options: dict = {"encoding": None}
    if use_tty:
        size = os.get_terminal_size(sys.stdout.fileno())
        options.update(term_type=os.environ.get("TERM", "xterm"), term_size=(size.columns, size.lines))
    process = await connection.create_process(argv, **options)
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(_copy_out(process.stdout, sys.stdout.buffer))]
    if not use_tty:
        tasks.append(asyncio.ensure_future(_copy_out(process.stderr, sys.stderr.buffer)))
    stdin_task = asyncio.ensure_future(_copy_stdin(process)) if interactive else None
    if not interactive:
        process.stdin.write_eof()
    if use_tty:
        def resize() -> None:
            size = os.get_terminal_size(sys.stdout.fileno())
            process.change_terminal_size(size.columns, size.lines)

        loop.add_signal_handler(signal.SIGWINCH, resize)
    try:
        with raw_terminal(sys.stdin.fileno()) if use_tty else contextlib.nullcontext():
            await asyncio.gather(*tasks)
            completed = await process.wait()
    finally:
        if use_tty:
            loop.remove_signal_handler(signal.SIGWINCH)
        if stdin_task:
            stdin_task.cancel()
    return completed.exit_status if completed.exit_status is not None else 255
