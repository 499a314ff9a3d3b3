"""A node's console for a caller on another machine: the driver's console command (`docker
exec -it … /bin/sh`, `virsh console …`) runs here on a pseudo-terminal of its own, and its
bytes are relayed over a WebSocket both ways.

Protocol: binary messages are terminal bytes (keystrokes in, output out); a text message from
the caller is a JSON window size `{"rows": R, "cols": C}`. The agent closes the socket when
the command ends, with its exit status as the close message ("exit N").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import struct
import termios
import tty

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

READ_SIZE = 65536
STOP_TIMEOUT = 5.0


class WindowSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int = Field(ge=1, le=10000)
    cols: int = Field(ge=1, le=10000)


async def relay(ws: web.WebSocketResponse, argv: list[str]) -> None:
    """Run `argv` as the session leader of a new terminal (so a hang-up reaches it) and relay
    until the command ends or the caller leaves; the command never outlives the socket."""
    master, slave = pty.openpty()
    # Raw from the start, as the console commands set it themselves once they run: input
    # arriving before that (a pasted or piped command, a Ctrl-D) must reach the node as it is.
    tty.setraw(slave)
    try:
        process = await asyncio.create_subprocess_exec(
            "setsid", "--ctty", *argv, stdin=slave, stdout=slave, stderr=slave
        )
    except OSError as error:
        os.close(master)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=f"cannot run: {error}".encode())
        return
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    output = asyncio.create_task(_output(ws, master))
    keys = asyncio.create_task(_input(ws, master))
    try:
        await asyncio.wait({output, keys}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        keys.cancel()
        output.cancel()
        await asyncio.gather(keys, output, return_exceptions=True)
        os.close(master)  # hangs up the terminal: the command's session gets SIGHUP
        code = await _stop(process)
    await ws.close(message=f"exit {code}".encode())


async def _output(ws: web.WebSocketResponse, master: int) -> None:
    """Terminal output to the caller, until the terminal has no writer left (EIO)."""
    loop = asyncio.get_running_loop()
    while True:
        readable = loop.create_future()
        loop.add_reader(master, readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(master)
        try:
            data = os.read(master, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not data:
            return
        await ws.send_bytes(data)


async def _input(ws: web.WebSocketResponse, master: int) -> None:
    """The caller's keystrokes and window sizes, until the caller leaves."""
    async for message in ws:
        if message.type == WSMsgType.BINARY:
            await _write_all(master, message.data)
        elif message.type == WSMsgType.TEXT:
            try:
                size = WindowSize.model_validate_json(message.data)
            except ValidationError:
                await ws.close(
                    code=WSCloseCode.UNSUPPORTED_DATA,
                    message=b'text messages are window sizes: {"rows": R, "cols": C}',
                )
                return
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


async def _write_all(fd: int, data: bytes) -> None:
    """Write without ever blocking the agent's loop on a command that does not read."""
    loop = asyncio.get_running_loop()
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(fd, writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(fd)


async def _stop(process: asyncio.subprocess.Process) -> int:
    """Its exit status; a command that ignores the hang-up is terminated, then killed."""
    for signal_it in (None, process.terminate, process.kill):
        if signal_it is not None:
            with contextlib.suppress(ProcessLookupError):
                signal_it()
        try:
            return await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            continue
    return await process.wait()
