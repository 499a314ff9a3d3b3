"""The user's side of a remote console (`nvi node console` against an agent's URL): this
terminal in raw mode, relayed to the agent's console WebSocket until the console ends or the
user types Ctrl-]. The terminal's mode is restored whatever happens.

Without a terminal (input from a pipe or a file) the input is sent as it is, and the
console lasts until the remote command ends: `echo 'uname -a; exit' | nvi node console …`.
(A Ctrl-D after the input would be lost whenever it reaches the node's terminal before its
shell has started, so the input must end the shell itself.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import termios
import tty
from collections.abc import Iterator

import aiohttp

ESCAPE = b"\x1d"  # Ctrl-]: leave, as with virsh console and telnet
READ_SIZE = 4096


async def attach(ws: aiohttp.ClientWebSocketResponse, stdin: int = 0, stdout: int = 1) -> str:
    """Relay until the console ends or the user leaves; the agent's closing words
    ("exit N"), or "detached" when the user left."""
    with _raw(stdin) as is_terminal:
        if is_terminal:
            await _send_size(ws, stdout)
        keys = asyncio.create_task(_keys(ws, stdin, is_terminal))
        output = asyncio.create_task(_output(ws, stdout))
        loop = asyncio.get_running_loop()
        if is_terminal:
            loop.add_signal_handler(
                signal.SIGWINCH, lambda: asyncio.ensure_future(_send_size(ws, stdout))
            )
        try:
            done, _ = await asyncio.wait({keys, output}, return_when=asyncio.FIRST_COMPLETED)
            if keys in done and not keys.exception() and keys.result() == "detached":
                return "detached"
            return await output
        finally:
            if is_terminal:
                loop.remove_signal_handler(signal.SIGWINCH)
            keys.cancel()
            output.cancel()
            await asyncio.gather(keys, output, return_exceptions=True)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[bool]:
    """Raw mode on a terminal (every key goes to the console, Ctrl-C included), restored on
    the way out; yields whether `fd` is a terminal."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _send_size(ws: aiohttp.ClientWebSocketResponse, fd: int) -> None:
    size = os.get_terminal_size(fd) if os.isatty(fd) else shutil.get_terminal_size()
    if size.lines and size.columns and not ws.closed:  # 0 x 0: a terminal of unknown size
        await ws.send_str(json.dumps({"rows": size.lines, "cols": size.columns}))


async def _keys(ws: aiohttp.ClientWebSocketResponse, fd: int, is_terminal: bool) -> str:
    """Input to the console; "detached" on Ctrl-] from a terminal, "ended" at the input's end
    (the console goes on until the remote command ends)."""
    while data := await _read(fd):
        if is_terminal and ESCAPE in data:
            await ws.send_bytes(data.split(ESCAPE, 1)[0])
            return "detached"
        await ws.send_bytes(data)
    return "ended"


async def _read(fd: int) -> bytes:
    """The next input, without blocking the loop on a terminal or a pipe (a regular file is
    never waited for, and cannot be watched)."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    try:
        loop.add_reader(fd, readable.set_result, None)
    except PermissionError:
        return os.read(fd, READ_SIZE)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    return os.read(fd, READ_SIZE)


async def _output(ws: aiohttp.ClientWebSocketResponse, fd: int) -> str:
    """The console's output to this terminal, until the agent closes; its closing words."""
    while True:
        message = await ws.receive()
        if message.type == aiohttp.WSMsgType.BINARY:
            view = memoryview(message.data)
            while view:
                view = view[os.write(fd, view) :]
        elif message.type == aiohttp.WSMsgType.CLOSE:
            return message.extra or ""
        elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ""
