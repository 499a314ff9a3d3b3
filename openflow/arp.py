"""The MAC of the next hop towards a locator: the route's gateway (or the locator itself when
on-link), asked by ARP on the uplink and remembered.

It owns no switch connection: the controller hands it a function that sends an ARP request
and feeds it the replies the switch relays (`learn`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from os_ken.lib.packet import arp, ether_types, ethernet, packet

from openflow import flows as f

ARP_TIMEOUT = 1.0
ARP_TRIES = 3


class NextHopMacs:
    def __init__(
        self,
        next_hop: Callable[[str], Awaitable[str]],
        *,
        timeout: float = ARP_TIMEOUT,
        tries: int = ARP_TRIES,
    ) -> None:
        self.next_hop = next_hop
        self.timeout = timeout
        self.tries = tries
        self.cache: dict[str, str] = {}
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}

    async def resolve(self, locator: str, ask: Callable[[str], None]) -> str:
        """The next hop's MAC towards `locator`; `ask(ip)` sends an ARP request for ip."""
        hop = await self.next_hop(locator)
        if hop in self.cache:
            return self.cache[hop]
        for _ in range(self.tries):
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(hop, []).append(waiter)
            ask(hop)
            try:
                return await asyncio.wait_for(waiter, self.timeout)
            except TimeoutError:
                continue
        raise RuntimeError(f"no ARP answer from next hop {hop} towards {locator}")

    def learn(self, ip: str, mac: str) -> None:
        """An ARP reply reached the server: remember it and wake whoever waits for it."""
        self.cache[ip] = mac
        for waiter in self._waiters.pop(ip, []):
            if not waiter.done():
                waiter.set_result(mac)


def request(server: f.Server, target: str) -> bytes:
    """An ARP request for `target` from the server's own address and MAC (broadcast)."""
    frame = packet.Packet()
    frame.add_protocol(
        ethernet.ethernet(
            dst="ff:ff:ff:ff:ff:ff", src=server.mac, ethertype=ether_types.ETH_TYPE_ARP
        )
    )
    frame.add_protocol(
        arp.arp(
            opcode=arp.ARP_REQUEST,
            src_mac=server.mac,
            src_ip=server.address,
            dst_mac="00:00:00:00:00:00",
            dst_ip=target,
        )
    )
    frame.serialize()
    return bytes(frame.data)
