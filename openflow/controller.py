"""The controller on asyncio: resolve what a decision needs, decide, install, keep books.

Decisions are pure (`openflow.decide`); next-hop MACs come from `openflow.arp`. Everything the
controller changes on the switch leaves through one path (`_push`): one batch of flow mods and
a barrier, so whatever follows (the resubmitted first packet) meets the new table. Every entry
point catches, logs and counts its errors: one bad packet or one directory hiccup never stops
the controller; a connection it could not set up is dropped, so the switch reconnects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, replace
from typing import Any, Protocol

from os_ken.lib.packet import arp, ipv4, packet, udp

from federation.errors import DirectoryError, NotFound
from federation.models import Change, ChangeType
from nvi.core.model import Network
from nvi.core.names import RESOLVER_PORT
from nvi.core.ports import NodePort
from openflow import arp as next_hops
from openflow import decide, dhcp, dns
from openflow import flows as f
from openflow.decide import Outcome, Pair

log = logging.getLogger(__name__)

# The counters each outcome adds to (`controller.stats.json`, `nvi lab status`).
OUTCOME_COUNTERS = {
    Outcome.ALLOWED: "conversations",
    Outcome.OUTBOUND: "outbound",
    Outcome.FLOATING: "outbound_floating",
    Outcome.REPLY_ONLY: "outbound_replies_only",
    Outcome.NOT_IN_TENANT: "denied",
    Outcome.POLICY: "denied",
    Outcome.INFRASTRUCTURE: "refused_infrastructure",
    Outcome.DIRECTORY_UNAVAILABLE: "directory_unavailable",
    Outcome.UNKNOWN_LOCATOR: "dropped_unknown_locator",
}


def _same_but_ways_in(old: f.LocalNode, new: f.LocalNode) -> bool:
    """Whether two states of a port's node differ at most in its floating address and
    published ports."""
    return replace(old, floating=new.floating, published=new.published) == new


class Channel(Protocol):
    """What the controller needs from its switch connection."""

    def send(self, mods: Sequence[f.FlowMod]) -> None:
        """Send flow mods as one batch, in order."""

    async def barrier(self) -> None:
        """Return once the switch has processed everything sent before."""

    def resubmit(self, in_port: int, data: bytes) -> None: ...
    def send_packet(self, port: int, data: bytes) -> None: ...
    async def dump_flows(self) -> list[f.Flow]: ...
    async def ports(self) -> dict[str, tuple[int, str]]: ...

    def close(self) -> None:
        """Drop the connection; the switch reconnects and set-up starts again."""


class Resolver(Protocol):
    async def resolve(self, ip: str | None = None, **names: str) -> Any: ...
    async def outbound(self, source: str, ip: str) -> Any: ...


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
        underlay: Iterable[ipaddress.IPv4Network] = (),
        idle_timeout: int = f.PAIR_IDLE_TIMEOUT,
    ) -> None:
        self.resolver = resolver
        self.read_ports = read_ports
        self.arp = next_hops.NextHopMacs(next_hop)
        self.server_address = server_address
        self.uplink_name = uplink
        self.infrastructure = tuple(infrastructure)
        self.underlay = tuple(underlay)
        self.idle_timeout = idle_timeout
        self.channel: Channel | None = None
        self.server: f.Server | None = None
        self.nodes: dict[int, f.LocalNode] = {}
        self.pairs: dict[tuple[str, str], Pair] = {}
        self.stats: Counter[str] = Counter()
        self.decision_ms: dict[str, list[float]] = {"egress": [], "ingress": []}
        self._pending: dict[tuple, asyncio.Future[None]] = {}

    # -- the one way to the switch ------------------------------------------------------------

    def _connection(self) -> Channel:
        if self.channel is None:
            raise RuntimeError("no switch connection")
        return self.channel

    async def _push(self, mods: Sequence[f.FlowMod]) -> None:
        """Send the flow mods as one batch, then wait for the switch to have applied them."""
        if not mods:
            return
        channel = self._connection()
        channel.send(mods)
        await channel.barrier()

    # -- switch connection --------------------------------------------------------------------

    async def connected(self, channel: Channel) -> None:
        """Reconcile, never flush: flows the switch already holds keep forwarding throughout.

        A set-up that fails drops the connection: the switch reconnects and this runs again,
        instead of a controller that holds a connection it knows nothing about."""
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
                underlay=self.underlay,
            )
            self.nodes = await self._local_nodes(ports)
            present = await channel.dump_flows()
            await self._push(self._reconcile_base(present))
            self._adopt_pairs(present)
            self.stats["connects"] += 1
            log.info(
                "switch connected: %d local nodes, %d conversations kept",
                len(self.nodes),
                len(self.pairs),
            )
        except Exception:
            self._failed("connect")
            self.channel = self.server = None
            channel.close()
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

    def _reconcile_base(self, present: list[f.Flow]) -> list[f.FlowMod]:
        """Delete the base flows that should not exist, add the missing ones."""
        assert self.server
        desired = f.desired_base_flows(self.server, list(self.nodes.values()))
        ours = [e for e in present if e.cookie >> f.COOKIE_CLASS_SHIFT == f.BASE]
        held = {p.identity for p in ours}
        missing = [d for d in desired if d.identity not in held]
        desired_keys = {d.key for d in desired}
        stale = [p for p in ours if p.key not in desired_keys]
        self.stats["base_flows_added"] += len(missing)
        self.stats["base_flows_removed"] += len(stale)
        return [*map(f.Delete, stale), *map(f.Add, missing)]

    def _adopt_pairs(self, present: list[f.Flow]) -> None:
        """Rebuild the conversation index from the egress flows the switch holds."""
        self.pairs = {}
        for entry in present:
            if entry.table != f.T_EGRESS or entry.cookie >> f.COOKIE_CLASS_SHIFT != f.PAIR:
                continue
            match = dict(entry.match)
            in_port = match.get("in_port")
            local = self.nodes.get(in_port) if isinstance(in_port, int) else None
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
            self.pairs[pair.key] = pair

    async def ports_changed(self) -> None:
        """A port came or went: install or remove that node's flows (and its conversations).
        A node whose ways in (floating address, published ports) alone changed keeps its
        conversations: see `_ways_in_changed`."""
        if not self.channel or not self.server:
            return
        try:
            nodes = await self._local_nodes(await self.channel.ports())
            mods: list[f.FlowMod] = []
            for number, node in self.nodes.items():
                new = nodes.get(number)
                if new is not None and new != node and _same_but_ways_in(node, new):
                    mods += self._ways_in_changed(node, new)
                elif new != node:
                    mods += self._forget_node(node)
            for number, node in nodes.items():
                old = self.nodes.get(number)
                if old != node and not (old is not None and _same_but_ways_in(old, node)):
                    mods += map(f.Add, f.port_flows(self.server, node))
            self.nodes = nodes
            await self._push(mods)
        except Exception:
            self._failed("ports")

    def _ways_in_changed(self, old: f.LocalNode, new: f.LocalNode) -> list[f.FlowMod]:
        """The node's port flows, old against new: the old-only ones go (a detached floating
        address or unpublished port stops at once), the new-only ones come; its conversations
        stay. Its outside flows and refusals go too: which way out it gets depends on its ways
        in, so its next packet to an outside address is decided again."""
        assert self.server
        before, after = f.port_flows(self.server, old), f.port_flows(self.server, new)
        kept = {entry.key for entry in after}
        held = {entry.identity for entry in before}
        self.pairs = {
            key: Pair(new, pair.remote_ip, pair.remote_locator) if pair.local == old else pair
            for key, pair in self.pairs.items()
        }
        detached = old.floating if old.floating != new.floating else ""
        return [
            *(f.Delete(entry) for entry in before if entry.key not in kept),
            *(
                f.DeleteCookie(f.cookie(kind, old.locator), f.CLASS_MASK | f.LOCAL_MASK)
                for kind in (f.DENY, f.OUTBOUND)
            ),
            *(f.forget_floating(detached) if detached else []),
            *(f.Add(entry) for entry in after if entry.identity not in held),
        ]

    def _forget_node(self, node: f.LocalNode) -> list[f.FlowMod]:
        self.pairs = {k: p for k, p in self.pairs.items() if node.locator not in k}
        return [
            *(
                f.DeleteCookie(f.cookie(kind, node.locator), f.CLASS_MASK | f.LOCAL_MASK)
                for kind in (f.BASE, f.PAIR, f.DENY, f.OUTBOUND)
            ),
            f.DeleteCookie(f.cookie(f.PAIR, "", node.locator), f.CLASS_MASK | f.REMOTE_MASK),
            *(f.forget_floating(node.floating) if node.floating else []),
        ]

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
                self.arp.learn(arp_packet.src_ip, arp_packet.src_mac)
            return
        ip = parsed.get_protocol(ipv4.ipv4)
        if ip is None or self.server is None:
            self.stats["dropped_unexpected"] += 1
            return
        if table_id == f.T_CLASSIFY and in_port in self.nodes:
            datagram = parsed.get_protocol(udp.udp)
            if datagram is not None and datagram.dst_port == RESOLVER_PORT:
                await self._name_query(self.nodes[in_port], data)
                return
            answer = dhcp.reply(data, self.nodes[in_port])
            if answer is not None and self.channel:
                self.channel.send_packet(in_port, answer)
                self.stats["dhcp_replies"] += 1
            return
        if table_id == f.T_EGRESS and in_port in self.nodes:
            key = ("egress", in_port, ip.dst)
            local = self.nodes[in_port]
            step = lambda *known: decide.egress(self._facts(), local, ip.dst, *known)  # noqa: E731
        elif table_id == f.T_INGRESS and in_port == self.server.uplink:
            key = ("ingress", ip.src, ip.dst)
            step = lambda *known: decide.ingress(self._facts(), ip.src, ip.dst, *known)  # noqa: E731
        else:
            self.stats["dropped_unexpected"] += 1
            return
        # Packets of one new conversation that arrive together share one decision.
        pending = self._pending.get(key)
        if pending is None:
            work = self._timed(key[0], self._first_packet(step))
            pending = self._pending[key] = asyncio.ensure_future(work)
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        await asyncio.shield(pending)
        # The decision's flows are in the table (barrier): the packet now takes them.
        if self.channel:
            self.channel.resubmit(in_port, data)

    async def _name_query(self, node: f.LocalNode, data: bytes) -> None:
        """Answer a node's DNS query from the directory (through the change-following cache),
        within the node's own tenant only; an unreadable query is dropped and counted."""
        try:
            asked = dns.query(data, node)
        except dns.Malformed as error:
            self.stats["dns_dropped"] += 1
            log.debug("dropped a DNS query from %s: %s", node.node_id, error)
            return
        found: dns.Found | str | None = None
        if asked.name is not None:
            try:
                answer = await self.resolver.resolve(name=asked.name, source=node.node_id)
                found = dns.Found(answer.destination.network, str(answer.destination.ip))
            except NotFound:
                found = None
            except DirectoryError:
                found = dns.UNAVAILABLE
        self.stats[f"dns_{dns.outcome(asked, found)}"] += 1
        if self.channel:
            self.channel.send_packet(node.port, dns.answer(asked, node, found))

    async def _timed(self, kind: str, work: Awaitable[None]) -> None:
        """Run one decision and keep its duration (the last few hundred, per kind)."""
        started = time.perf_counter()
        try:
            await work
        finally:
            durations = self.decision_ms[kind]
            durations.append((time.perf_counter() - started) * 1000)
            del durations[:-500]

    def _facts(self) -> decide.Facts:
        assert self.server
        return decide.Facts(self.server, tuple(self.nodes.values()), self.idle_timeout)

    async def _first_packet(self, step: Callable[..., decide.Result]) -> None:
        """Resolve what the decision asks for (the directory, the next hop's MAC), decide,
        install, and keep the books."""
        answer: decide.Answer = decide.NOT_ASKED
        mac: str | None = None
        result = step(answer, mac)
        while not isinstance(result, decide.Decision):
            if isinstance(result, decide.Lookup):
                answer = await self._lookup(result)
            else:
                mac = await self.arp.resolve(result.locator, self._send_arp_request)
            result = step(answer, mac)
        self.stats[OUTCOME_COUNTERS[result.outcome]] += 1
        if result.outcome == Outcome.INFRASTRUCTURE:
            # A wrong or forged record must never make tenant traffic reach this server, the
            # directory or a router: only the deny flow is installed.
            log.warning("refused a conversation with infrastructure address %s", result.detail)
        elif result.outcome == Outcome.DIRECTORY_UNAVAILABLE:
            log.warning("directory lookup failed (%s); retrying this pair shortly", result.detail)
        await self._push([f.Add(entry) for entry in result.flows])
        for pair in result.pairs:
            self.pairs[pair.key] = pair

    async def _lookup(self, question: decide.Lookup) -> decide.Answer:
        """The directory's answer; "not found" is an answer, any other failure is none."""
        try:
            if question.outbound:
                assert question.ip is not None, "an outbound question names an address"
                return await self.resolver.outbound(question.source, question.ip)
            if question.ip is not None:
                return await self.resolver.resolve(question.ip, source=question.source)
            assert question.locator is not None, "a lookup names an address or a locator"
            return await self.resolver.resolve(locator=question.locator, source=question.source)
        except NotFound:
            return None
        except DirectoryError as error:
            return decide.Unavailable(str(error))

    def _send_arp_request(self, target: str) -> None:
        assert self.server
        self._connection().send_packet(self.server.uplink, next_hops.request(self.server, target))

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
        mods: list[f.FlowMod] = []
        if change.type in (ChangeType.NODE_MOVED, ChangeType.NODE_DELETED):
            gone = change.previous or change.node
            assert gone is not None
            mods.append(
                f.DeleteCookie(f.cookie(f.PAIR, "", gone.locator), f.CLASS_MASK | f.REMOTE_MASK)
            )
            self.pairs = {k: p for k, p in self.pairs.items() if k[1] != gone.locator}
        if change.type in (ChangeType.NODE_CREATED, ChangeType.LINK_CREATED, ChangeType.NODE_MOVED):
            mods.append(f.DeleteCookie(f.cookie(f.DENY), f.CLASS_MASK))
        if change.type == ChangeType.NETWORK_UPDATED and change.network is not None:
            mods += self._outbound_changed(change.network)
        await self._push(mods)
        if change.type == ChangeType.LINK_REMOVED:
            affected = [p for p in self.pairs.values() if p.local.tenant == change.tenant]
            await asyncio.gather(*(self._revalidate(p) for p in affected))

    def _outbound_changed(self, network: Network) -> list[f.FlowMod]:
        """Outbound turned off: the network's local nodes lose their NATed flows at once; on:
        denied first packets are asked again."""
        if network.outbound:
            return [f.DeleteCookie(f.cookie(f.DENY), f.CLASS_MASK)]
        return [
            f.DeleteCookie(f.cookie(f.OUTBOUND, node.locator), f.CLASS_MASK | f.LOCAL_MASK)
            for node in self.nodes.values()
            if (node.tenant, node.network) == (network.tenant, network.name)
        ]

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
            self.pairs.pop(pair.key, None)
            self.stats["conversations_revoked"] += 1
            mask = f.CLASS_MASK | f.LOCAL_MASK | f.REMOTE_MASK
            await self._push([f.DeleteCookie(f.cookie(f.PAIR, *pair.key), mask)])

    def _failed(self, where: str) -> None:
        self.stats[f"errors_{where}"] += 1
        log.exception("error in %s (handled; the controller keeps running)", where)
