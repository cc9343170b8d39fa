"""Stream a remote command's stdio to this terminal — plain pipes, or a real interactive TTY.

With a TTY the local terminal goes raw (so Ctrl-C, Ctrl-D and arrow keys travel to the remote
side as bytes), the remote PTY follows window resizes (SIGWINCH), and the terminal is restored
whatever happens. Without one, stdout and stderr are copied exactly, byte for byte.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty

from cantainer.ssh import Connection


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


async def stream_command(connection: Connection, argv: list[str], interactive: bool, use_tty: bool) -> int:
    """Run argv on the host with our stdio attached; return its exit status."""
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
