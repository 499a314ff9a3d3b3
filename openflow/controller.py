"""The controller's decisions, on asyncio: first packets, directory answers, reconciliation.

It computes flows with `openflow.flows` and hands them to a `Channel`: the thin adapter to the
switch (os-ken in production, an in-memory switch in tests). Every entry point catches,
logs and counts its errors: one bad packet or one directory hiccup never stops the controller.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from os_ken.lib.packet import arp, ether_types, ethernet, ipv4, packet

from federation.errors import DirectoryError, NotFound
from federation.models import Change, ChangeType
from nvi.ports import NodePort
from openflow import dhcp
from openflow import flows as f

log = logging.getLogger(__name__)

ARP_TIMEOUT = 1.0
ARP_TRIES = 3


class Channel(Protocol):
    """What the controller needs from its switch connection."""

    def install(self, entries: list[f.Flow]) -> None: ...
    def delete_strict(self, entries: list[f.Flow]) -> None: ...
    def delete_cookie(self, cookie: int, mask: int) -> None: ...
    def resubmit(self, in_port: int, data: bytes) -> None: ...
    def send_packet(self, port: int, data: bytes) -> None: ...
    async def dump_flows(self) -> list[f.Flow]: ...
    async def ports(self) -> dict[str, tuple[int, str]]: ...


class Resolver(Protocol):
    async def resolve(self, ip: str, **source: str) -> Any: ...


@dataclass(frozen=True)
class Pair:
    """A conversation this controller installed (or found installed after a restart)."""

    local: f.LocalNode
    remote_ip: str
    remote_locator: str


class Controller:
    def __init__(
        self,
        resolver: Resolver,
        read_ports: Callable[[], Awaitable[dict[str, NodePort]]],
        next_hop: Callable[[str], Awaitable[str]],
        server_address: str,
        uplink: str = "uplink",
        *,
        infrastructure: Iterable[ipaddress.IPv4Network] = (),
        idle_timeout: int = f.PAIR_IDLE_TIMEOUT,
    ) -> None:
        self.resolver = resolver
        self.read_ports = read_ports
        self.next_hop = next_hop
        self.server_address = server_address
        self.uplink_name = uplink
        self.infrastructure = tuple(infrastructure)
        self.idle_timeout = idle_timeout
        self.channel: Channel | None = None
        self.server: f.Server | None = None
        self.nodes: dict[int, f.LocalNode] = {}
        self.pairs: dict[tuple[str, str], Pair] = {}
        self.arp_cache: dict[str, str] = {}
        self.stats: Counter[str] = Counter()
        self.decision_ms: dict[str, list[float]] = {"egress": [], "ingress": []}
        self._arp_waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._pending: dict[tuple, asyncio.Future[None]] = {}

    # -- switch connection --------------------------------------------------------------------

    async def connected(self, channel: Channel) -> None:
        """Reconcile, never flush: flows the switch already holds keep forwarding throughout."""
        self.channel = channel
        try:
            ports = await channel.ports()
            if self.uplink_name not in ports or "LOCAL" not in ports:
                raise RuntimeError(
                    f"bridge has no {self.uplink_name} or LOCAL port: {sorted(ports)}"
                )
            self.server = f.Server(
                address=self.server_address,
                mac=ports["LOCAL"][1].lower(),
                uplink=ports[self.uplink_name][0],
                infrastructure=self.infrastructure,
            )
            self.nodes = await self._local_nodes(ports)
            present = await channel.dump_flows()
            self._reconcile_base(present)
            self._adopt_pairs(present)
            self.stats["connects"] += 1
            log.info(
                "switch connected: %d local nodes, %d conversations kept",
                len(self.nodes),
                len(self.pairs),
            )
        except Exception:
            self._failed("connect")
            return
        await asyncio.gather(*(self._revalidate(p) for p in list(self.pairs.values())))

    def disconnected(self) -> None:
        self.channel = None

    async def _local_nodes(self, ports: dict[str, tuple[int, str]]) -> dict[int, f.LocalNode]:
        return {
            ports[name][0]: f.LocalNode(port=ports[name][0], **asdict(port))
            for name, port in (await self.read_ports()).items()
            if name in ports
        }

    def _reconcile_base(self, present: list[f.Flow]) -> None:
        assert self.channel and self.server
        desired = f.desired_base_flows(self.server, list(self.nodes.values()))
        ours = [e for e in present if e.cookie >> f.COOKIE_CLASS_SHIFT == f.BASE]
        held = {p.identity for p in ours}
        missing = [d for d in desired if d.identity not in held]
        desired_keys = {d.key for d in desired}
        stale = [p for p in ours if p.key not in desired_keys]
        self.channel.delete_strict(stale)
        self.channel.install(missing)
        self.stats["base_flows_added"] += len(missing)
        self.stats["base_flows_removed"] += len(stale)

    def _adopt_pairs(self, present: list[f.Flow]) -> None:
        """Rebuild the conversation index from the egress flows the switch holds."""
        self.pairs = {}
        for entry in present:
            if entry.table != f.T_EGRESS or entry.cookie >> f.COOKIE_CLASS_SHIFT != f.PAIR:
                continue
            match = dict(entry.match)
            local = self.nodes.get(match.get("in_port"))
            if local is None:
                continue
            sets = {a.field: a.value for a in entry.actions if isinstance(a, f.SetField)}
            outputs = [a.port for a in entry.actions if isinstance(a, f.Output)]
            if "ipv4_dst" in sets:
                remote_locator = str(sets["ipv4_dst"])
            elif outputs and outputs[0] in self.nodes:
                remote_locator = self.nodes[outputs[0]].locator
            else:
                continue
            pair = Pair(local, str(match["ipv4_dst"]), remote_locator)
            self.pairs[(local.locator, remote_locator)] = pair

    async def ports_changed(self) -> None:
        """A port came or went: install or remove that node's flows (and its conversations)."""
        if not self.channel or not self.server:
            return
        try:
            nodes = await self._local_nodes(await self.channel.ports())
            for number, node in self.nodes.items():
                if nodes.get(number) != node:
                    self._forget_node(node)
            for number, node in nodes.items():
                if self.nodes.get(number) != node:
                    self.channel.install(f.port_flows(self.server, node))
            self.nodes = nodes
        except Exception:
            self._failed("ports")

    def _forget_node(self, node: f.LocalNode) -> None:
        assert self.channel
        for kind in (f.BASE, f.PAIR, f.DENY):
            self.channel.delete_cookie(f.cookie(kind, node.locator), f.CLASS_MASK | f.LOCAL_MASK)
        self.channel.delete_cookie(f.cookie(f.PAIR, "", node.locator), f.CLASS_MASK | f.REMOTE_MASK)
        self.pairs = {k: p for k, p in self.pairs.items() if node.locator not in k}

    def flow_removed(self, cookie: int) -> None:
        """An egress flow idled out: the conversation is over."""
        self.stats["flows_removed"] += 1
        self.pairs = {
            key: pair for key, pair in self.pairs.items() if f.cookie(f.PAIR, *key) != cookie
        }

    # -- first packets ------------------------------------------------------------------------

    async def packet_in(self, in_port: int, table_id: int, data: bytes) -> None:
        try:
            await self._packet_in(in_port, table_id, data)
        except Exception:
            self._failed("packet_in")

    async def _packet_in(self, in_port: int, table_id: int, data: bytes) -> None:
        self.stats["packet_in"] += 1
        parsed = packet.Packet(data)
        arp_packet = parsed.get_protocol(arp.arp)
        if arp_packet is not None:
            if arp_packet.opcode == arp.ARP_REPLY:
                self._learn(arp_packet.src_ip, arp_packet.src_mac)
            return
        ip = parsed.get_protocol(ipv4.ipv4)
        if ip is None or self.server is None:
            self.stats["dropped_unexpected"] += 1
            return
        if table_id == f.T_CLASSIFY and in_port in self.nodes:
            answer = dhcp.reply(data, self.nodes[in_port])
            if answer is not None and self.channel:
                self.channel.send_packet(in_port, answer)
                self.stats["dhcp_replies"] += 1
            return
        if table_id == f.T_EGRESS and in_port in self.nodes:
            key = ("egress", in_port, ip.dst)
            work = lambda: self._first_egress(self.nodes[in_port], ip.dst)  # noqa: E731
        elif table_id == f.T_INGRESS and in_port == self.server.uplink:
            key = ("ingress", ip.src, ip.dst)
            work = lambda: self._first_ingress(ip.src, ip.dst)  # noqa: E731
        else:
            self.stats["dropped_unexpected"] += 1
            return
        # Packets of one new conversation that arrive together share one decision.
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._timed(key[0], work))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        await asyncio.shield(pending)
        if self.channel:
            self.channel.resubmit(in_port, data)

    async def _timed(self, kind: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run one decision and keep its duration (the last few hundred, per kind)."""
        started = time.perf_counter()
        try:
            await work()
        finally:
            durations = self.decision_ms[kind]
            durations.append((time.perf_counter() - started) * 1000)
            del durations[:-500]

    async def _first_egress(self, local: f.LocalNode, destination_ip: str) -> None:
        assert self.channel and self.server
        try:
            answer = await self.resolver.resolve(destination_ip, source=local.node_id)
        except NotFound:
            answer = None
        except DirectoryError as error:
            self._directory_unavailable(
                f.deny_egress(local, destination_ip, f.BACKOFF_HARD_TIMEOUT), error
            )
            return
        destination = answer.destination if answer else None
        if destination is None or not answer.allowed or destination.tenant != local.tenant:
            self.channel.install([f.deny_egress(local, destination_ip)])
            self.stats["denied"] += 1
            return
        if f.is_infrastructure(self.server, destination.locator):
            self._refuse_infrastructure(f.deny_egress(local, destination_ip), destination.locator)
            return
        remote = f.Remote(destination.id, destination.ip, destination.mac, destination.locator)
        peer = next((n for n in self.nodes.values() if n.locator == destination.locator), None)
        if peer is not None:
            entries = self._conversation(f.Conversation(local, remote, peer.port))
            back = f.Remote(local.node_id, local.ip, local.mac, local.locator)
            entries += self._conversation(f.Conversation(peer, back, local.port))
            self.pairs[(peer.locator, local.locator)] = Pair(peer, local.ip, local.locator)
        else:
            mac = await self.resolve_mac(destination.locator)
            entries = self._conversation(f.Conversation(local, remote, next_hop_mac=mac))
        self.channel.install(entries)
        self.pairs[(local.locator, remote.locator)] = Pair(local, remote.ip, remote.locator)
        self.stats["conversations"] += 1

    async def _first_ingress(self, source_locator: str, local_locator: str) -> None:
        assert self.channel and self.server
        local = next((n for n in self.nodes.values() if n.locator == local_locator), None)
        if local is None:
            self.stats["dropped_unknown_locator"] += 1
            return
        if f.is_infrastructure(self.server, source_locator):
            self._refuse_infrastructure(
                f.deny_ingress(local_locator, source_locator), source_locator
            )
            return
        try:
            answer = await self.resolver.resolve(locator=source_locator, source=local.node_id)
            source = answer.destination
            allowed = answer.allowed and source.tenant == local.tenant
        except NotFound:
            allowed = False
        except DirectoryError as error:
            self._directory_unavailable(
                f.deny_ingress(local_locator, source_locator, f.BACKOFF_HARD_TIMEOUT), error
            )
            return
        if not allowed:
            self.channel.install([f.deny_ingress(local_locator, source_locator)])
            self.stats["denied"] += 1
            return
        mac = await self.resolve_mac(source_locator)
        remote = f.Remote(source.id, source.ip, source.mac, source_locator)
        self.channel.install(self._conversation(f.Conversation(local, remote, next_hop_mac=mac)))
        self.pairs[(local.locator, source_locator)] = Pair(local, source.ip, source_locator)
        self.stats["conversations"] += 1

    def _conversation(self, pair: f.Conversation) -> list[f.Flow]:
        assert self.server
        return f.conversation_flows(self.server, pair, self.idle_timeout)

    def _refuse_infrastructure(self, deny: f.Flow, address: str) -> None:
        """Never rewrite towards (or accept from) the underlay's own infrastructure, whatever
        the directory answered: a wrong or forged record must not make tenant traffic reach
        this server, the directory or a router."""
        assert self.channel
        self.channel.install([deny])
        self.stats["refused_infrastructure"] += 1
        log.warning("refused a conversation with infrastructure address %s", address)

    def _directory_unavailable(self, backoff: f.Flow, error: DirectoryError) -> None:
        """The directory could not answer: drop this pair briefly instead of sending every
        packet to the controller, and ask again once the short drop expires."""
        assert self.channel
        self.channel.install([backoff])
        self.stats["directory_unavailable"] += 1
        log.warning("directory lookup failed (%s); retrying this pair shortly", error)

    # -- next hops on the underlay --------------------------------------------------------------

    async def resolve_mac(self, locator: str) -> str:
        """The MAC of the next hop towards a locator: that server, or the router on the way."""
        hop = await self.next_hop(locator)
        if hop in self.arp_cache:
            return self.arp_cache[hop]
        for _ in range(ARP_TRIES):
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._arp_waiters.setdefault(hop, []).append(waiter)
            self._send_arp_request(hop)
            try:
                return await asyncio.wait_for(waiter, ARP_TIMEOUT)
            except TimeoutError:
                continue
        raise RuntimeError(f"no ARP answer from next hop {hop} towards {locator}")

    def _send_arp_request(self, target: str) -> None:
        assert self.channel and self.server
        request = packet.Packet()
        request.add_protocol(
            ethernet.ethernet(
                dst="ff:ff:ff:ff:ff:ff", src=self.server.mac, ethertype=ether_types.ETH_TYPE_ARP
            )
        )
        request.add_protocol(
            arp.arp(
                opcode=arp.ARP_REQUEST,
                src_mac=self.server.mac,
                src_ip=self.server.address,
                dst_mac="00:00:00:00:00:00",
                dst_ip=target,
            )
        )
        request.serialize()
        self.channel.send_packet(self.server.uplink, bytes(request.data))

    def _learn(self, ip: str, mac: str) -> None:
        self.arp_cache[ip] = mac
        for waiter in self._arp_waiters.pop(ip, []):
            if not waiter.done():
                waiter.set_result(mac)

    # -- directory changes ---------------------------------------------------------------------

    async def on_change(self, change: Change) -> None:
        try:
            await self._on_change(change)
        except Exception:
            self._failed("change")

    async def _on_change(self, change: Change) -> None:
        if not self.channel:
            return
        self.stats["changes"] += 1
        if change.type in (ChangeType.NODE_MOVED, ChangeType.NODE_DELETED):
            gone = change.previous or change.node
            assert gone is not None
            self.channel.delete_cookie(
                f.cookie(f.PAIR, "", gone.locator), f.CLASS_MASK | f.REMOTE_MASK
            )
            self.pairs = {k: p for k, p in self.pairs.items() if k[1] != gone.locator}
        if change.type in (ChangeType.NODE_CREATED, ChangeType.LINK_CREATED, ChangeType.NODE_MOVED):
            self.channel.delete_cookie(f.cookie(f.DENY), f.CLASS_MASK)
        if change.type == ChangeType.LINK_REMOVED:
            affected = [p for p in self.pairs.values() if p.local.tenant == change.tenant]
            await asyncio.gather(*(self._revalidate(p) for p in affected))

    async def on_resync(self) -> None:
        """Changes were lost: check every conversation again."""
        await asyncio.gather(*(self._revalidate(p) for p in list(self.pairs.values())))

    async def _revalidate(self, pair: Pair) -> None:
        """Remove a conversation the directory no longer allows."""
        try:
            answer = await self.resolver.resolve(pair.remote_ip, source=pair.local.node_id)
            valid = answer.allowed and answer.destination.locator == pair.remote_locator
        except NotFound:
            valid = False
        except DirectoryError:
            self._failed("revalidate")
            return
        if not valid and self.channel:
            key = (pair.local.locator, pair.remote_locator)
            self.channel.delete_cookie(
                f.cookie(f.PAIR, *key), f.CLASS_MASK | f.LOCAL_MASK | f.REMOTE_MASK
            )
            self.pairs.pop(key, None)
            self.stats["conversations_revoked"] += 1

    def _failed(self, where: str) -> None:
        self.stats[f"errors_{where}"] += 1
        log.exception("error in %s (handled; the controller keeps running)", where)
