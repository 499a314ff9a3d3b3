"""A node's wire: a veth whose one end is the container's `eth0` (tenant MAC, IP and default
route via the network's gateway) and whose other end, in the agent's own namespace, is the
node's port on the bridge.

Netlink work inside a container's namespace runs on a short-lived thread that has entered
that namespace (setns changes only the calling thread), never through pyroute2's `netns=`:
that forks a copy of the agent and stops it with SIGTERM, and the copy, which inherits
asyncio's signal handler and wakeup socket, writes "SIGTERM" into the agent's own event
loop, which then shuts the agent down (see docs/hostagent.md, "Why no netns=").
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from hostagent.errors import Failed

INSIDE = "eth0"
PORT_PATTERN = re.compile(r"^nv[0-9a-f]{10}$")
T = TypeVar("T")


async def run(*argv: str) -> str:
    """Run a helper program; a failure is the server's fault, not the caller's."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise Failed(f"{argv[0]} {argv[1]} failed: {(err or out).decode().strip()}")
    return out.decode()


def open_netns(pid: int) -> int:
    """A descriptor of the process's network namespace: it stays valid (and the same
    namespace) even if the process exits and its pid is reused meanwhile."""
    try:
        return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    except OSError as error:
        raise Failed(f"no network namespace for pid {pid}: {error.strerror}") from None


async def on_thread(work: Callable[[], T], namespace: int | None = None) -> T:
    """Run blocking `work` on a fresh thread, inside `namespace` (an fd) if given. The
    thread ends afterwards, so no pooled thread is ever left in a foreign namespace."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(value: T) -> None:
        if not future.done():
            future.set_result(value)

    def fail(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    def target() -> None:
        try:
            if namespace is not None:
                netns.setns(namespace, flags=0)
            value = work()
        except BaseException as error:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(fail, error)
        else:
            loop.call_soon_threadsafe(deliver, value)

    threading.Thread(target=target, name="netns", daemon=True).start()
    return await future


async def plumbed(pid: int, port: str) -> bool:
    """Whether the port exists here and the container has its end (veth ends die together)."""
    if await ifindex(port) is None:
        return False
    fd = open_netns(pid)
    try:
        return await on_thread(lambda: _lookup(INSIDE) is not None, fd)
    finally:
        os.close(fd)


async def plumb(pid: int, port: str, mac: str, ip: str, prefixlen: int, gateway: str) -> None:
    """(Re)create the veth into the container's namespace and configure the tenant side."""
    fd = open_netns(pid)
    try:
        await unplumb(port)
        await on_thread(lambda: _delete(INSIDE), fd)
        await on_thread(lambda: _add_veth(port, fd))
        await on_thread(lambda: _configure_inside(mac, ip, prefixlen, gateway), fd)
    except NetlinkError as error:
        raise Failed(f"plumbing {port} into pid {pid}: {error}") from None
    finally:
        os.close(fd)
    # Complete checksums in the kernel: OVS 3.1 corrupts partial ones when it rewrites addresses,
    # userspace TSO or not (docs/decisions.md, "Userspace TSO").
    await run("ethtool", "-K", port, "tx", "off")
    await run("nsenter", "-t", str(pid), "-n", "ethtool", "-K", INSIDE, "tx", "off")


async def unplumb(port: str) -> bool:
    """Delete the port's veth (and so the container's end); returns whether it existed."""
    return await on_thread(lambda: _delete(port))


async def ifindex(port: str) -> int | None:
    return await on_thread(lambda: _lookup(port))


async def ports_here() -> list[str]:
    """Every link in the agent's namespace named like a node port."""

    def names() -> list[str]:
        with IPRoute() as ipr:
            return [link.get("ifname") for link in ipr.get_links()]

    return [name for name in await on_thread(names) if name and PORT_PATTERN.match(name)]


def _lookup(name: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        return found[0] if found else None


def _delete(name: str) -> bool:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            try:
                ipr.link("del", index=found[0])
            except NetlinkError as error:
                # A stopped container's namespace takes its end of the veth, and the kernel
                # the pair, with it: gone between the lookup and the delete is gone.
                if error.code != errno.ENODEV:
                    raise
        return bool(found)


def _add_veth(port: str, peer_namespace: int) -> None:
    with IPRoute() as ipr:
        ipr.link(
            "add", ifname=port, kind="veth", peer={"ifname": INSIDE, "net_ns_fd": peer_namespace}
        )
        (index,) = ipr.link_lookup(ifname=port)
        ipr.link("set", index=index, state="up")


def _configure_inside(mac: str, ip: str, prefixlen: int, gateway: str) -> None:
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=INSIDE)
        ipr.link("set", index=index, address=mac, state="up")
        ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
        ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)
