"""One server's part of `nvi trace`: its switch, its node ports and its controller's questions.

Everything here starts from the server's own controller config (the OVSDB socket, the
infrastructure, the directory and its credential), so a lab and a real server trace a packet
the same way: the lab form (`nvi.lab.trace`) calls this for each server the packet reaches,
`nvi trace --config` for the one server it runs on. Everything it concludes is
`openflow.trace`'s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from federation.client import DirectoryClient
from federation.errors import DirectoryError, NotFound
from federation.models import Outbound, Resolution
from nvi.core.errors import NviError
from nvi.core.ports import NAME, NodePort, vsctl_rows
from openflow import flows as f
from openflow import trace as t
from openflow.service import ControllerConfig, load_config

BRIDGE = "br-int"  # the agent's default bridge; the controller's config does not name one

# Runs one piece of work with a client of the directory holding the server's credential.
Ask = Callable[[Callable[[DirectoryClient], Awaitable[Any]]], Any]


@dataclass(frozen=True)
class NodeOnPort:
    server: str
    port: str
    node: f.LocalNode
    label: str  # tenant/name


@dataclass(frozen=True)
class ServerView:
    """What the trace needs of one server: its config, switch MAC, uplink, node ports, and
    the directory as its controller asks it."""

    name: str
    config: ControllerConfig
    mac: str
    uplink: int
    nodes: dict[int, NodeOnPort]
    ask: Ask

    def node_at(self, locator: str) -> NodeOnPort | None:
        return next((n for n in self.nodes.values() if n.node.locator == locator), None)

    @property
    def facts(self) -> f.Server:
        """The server as its controller sees it, infrastructure from its own config."""
        config = self.config
        return f.Server(config.address, self.mac, self.uplink, tuple(config.infrastructure))


def read_server(
    name: str,
    config: ControllerConfig,
    ask: Ask,
    names: Callable[[list[str]], dict[str, str]] | None = None,
) -> ServerView:
    """Read the server's bridge from the OVSDB its controller uses. `names` names nodes
    whose port carries only their id (default: the directory, asked with `ask`)."""
    rows = vsctl_rows(
        _vsctl(
            config.ovsdb, "--format=json", "--columns=name,ofport,external_ids", "list", "Interface"
        )
    )
    mac = _vsctl(config.ovsdb, "get", "interface", BRIDGE, "mac_in_use").strip().strip('"')
    uplink, found = 0, []
    for row in rows:
        port_name, ofport, ids = row["name"], row["ofport"], row["external_ids"]
        if port_name == config.uplink:
            uplink = ofport
        elif isinstance(ofport, int) and (port := NodePort.from_external_ids(ids)) is not None:
            found.append((port_name, ofport, port, ids.get(NAME)))
    unnamed = [p.locator for _, _, p, given in found if not given]
    known = (names or (lambda locators: locator_names(ask, locators)))(unnamed)
    nodes = {
        ofport: NodeOnPort(
            name,
            port_name,
            f.LocalNode(port=ofport, **asdict(port)),
            f"{port.tenant}/{given or known.get(port.locator) or port.node_id}",
        )
        for port_name, ofport, port, given in found
    }
    return ServerView(name, config, mac.lower(), uplink, nodes, ask)


def probe(
    source: f.LocalNode, destination: str, protocol: str, port: int | None, from_ip: str | None
) -> t.Probe:
    """The packet `source` sends to `destination`, as it leaves the node."""
    return t.Probe(
        eth_src=source.mac,
        eth_dst=f.gateway_mac(source.tenant, source.network),  # what it ARPs for any address
        ip_src=ipv4(from_ip, "--from-ip") if from_ip else source.ip,
        ip_dst=destination,
        protocol=protocol,
        port=port,
    )


def hop(
    view: ServerView, in_port: int, packet: t.Probe, labels: dict[str, str], predicted: bool
) -> t.Hop:
    """What the server's switch does with `packet` arriving on `in_port`, and what its
    controller would decide when the packet reaches it or a refusal drops it."""
    result = t.parse(ofproto_trace(view.config.ovsdb, packet.flow(in_port)))
    names = {number: n.label for number, n in view.nodes.items()}
    verdict = t.verdict(result, view.uplink, names)
    found = t.Hop(view.name, in_port, packet, result, verdict, labels, predicted=predicted)
    hit = verdict.hit
    refused = hit is not None and hit.cookie >> f.COOKIE_CLASS_SHIFT == f.DENY
    if hit is not None and (verdict.outcome == t.Outcome.CONTROLLER or refused):
        found.decision = _decide(view, hit.table, in_port, packet, labels)
    return found


def _decide(
    view: ServerView, table: int, in_port: int, packet: t.Probe, labels: dict[str, str]
) -> t.Decision | None:
    """Ask the directory what the server's controller asks for a packet of this table."""
    if table == f.T_EGRESS and in_port in view.nodes:
        local = view.nodes[in_port].node
        answer = _resolve(view.ask, packet.ip_dst, source=local.node_id)
        outbound = _outbound(view.ask, local.node_id, packet.ip_dst) if answer is None else None
        others = [n.node for n in view.nodes.values()]
        return t.egress_decision(
            local, packet.ip_dst, answer, others, labels, server=view.facts, outbound=outbound
        )
    if table == f.T_INGRESS:
        owner = view.node_at(packet.ip_dst)
        facts = view.facts
        if owner is None:
            return t.ingress_decision(
                None, packet.ip_src, packet.ip_dst, None, labels, server=facts
            )
        answer = _resolve(view.ask, locator=packet.ip_src, source=owner.node.node_id)
        return t.ingress_decision(
            owner.node, packet.ip_src, packet.ip_dst, answer, labels, server=facts
        )
    return None


# -- the server's Open vSwitch, found from its OVSDB socket -------------------------------------


def ovs_rundir(ovsdb: str) -> Path:
    """The run directory of the OVS that serves `ovsdb` (`unix:DIR/db.sock`): its daemons'
    control sockets sit next to the database's."""
    kind, _, path = ovsdb.partition(":")
    if kind != "unix" or not path:
        raise NviError(f"ovsdb {ovsdb!r} is not a unix: socket: trace on the server itself")
    return Path(path).parent


def _ovs_env(ovsdb: str) -> dict[str, str]:
    return {**os.environ, "OVS_RUNDIR": str(ovs_rundir(ovsdb))}


def vswitchd_target(ovsdb: str) -> str:
    """ovs-appctl's target: the lab's fixed control socket, else the daemon's name (found
    through its pid file in the run directory, as on a packaged server)."""
    fixed = ovs_rundir(ovsdb) / "ovs-vswitchd.ctl"
    return str(fixed) if fixed.exists() else "ovs-vswitchd"


def _vsctl(ovsdb: str, *args: str) -> str:
    return _run(["ovs-vsctl", f"--db={ovsdb}", "--timeout=10", *args], ovsdb, "ovs-vsctl")


def ofproto_trace(ovsdb: str, flow: str) -> str:
    """`ovs-appctl ofproto/trace` on the vswitchd that uses `ovsdb`."""
    argv = ["ovs-appctl", f"--target={vswitchd_target(ovsdb)}", "ofproto/trace", BRIDGE, flow]
    return _run(argv, ovsdb, "ofproto/trace")


def _run(argv: list[str], ovsdb: str, what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=_ovs_env(ovsdb))
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip() or "failed").splitlines()[0]
        raise NviError(f"{what} on the OVS of {ovsdb} failed: {message}")
    return result.stdout


# -- the directory, as the server's controller asks it ------------------------------------------


def config_ask(config: ControllerConfig) -> Ask:
    """The directory at the config's URL, with the config's credential and CA."""
    token = config.token_file.read_text().strip()

    def ask(work: Callable[[DirectoryClient], Awaitable[Any]]) -> Any:
        async def session() -> Any:
            async with DirectoryClient(config.directory, token, ca_file=config.ca_file) as client:
                return await work(client)

        return asyncio.run(session())

    return ask


def _resolve(ask: Ask, ip: str | None = None, **names: str) -> Resolution | None:
    """The directory's answer, or None when it knows no such destination in the tenant."""

    async def resolve(client: DirectoryClient) -> Resolution | None:
        try:
            return await client.resolve(ip, **names)
        except NotFound:
            return None

    return ask(resolve)


def _outbound(ask: Ask, source: str, ip: str) -> Outbound | None:
    """Whether the directory lets `source` reach `ip` outside its tenant (None: no answer)."""

    async def outbound(client: DirectoryClient) -> Outbound | None:
        try:
            return await client.outbound(source, ip)
        except NotFound:
            return None

    return ask(outbound)


def locator_names(ask: Ask, locators: list[str]) -> dict[str, str]:
    """Node names by locator, where the directory tells them to this credential (a port of
    the lab's namespace nodes carries only the node's id)."""
    if not locators:
        return {}

    async def locate(client: DirectoryClient) -> dict[str, str]:
        async def one(locator: str) -> tuple[str, str]:
            try:
                return locator, (await client.locate(locator)).node.name
            except DirectoryError:
                return locator, ""

        return dict(await asyncio.gather(*(one(locator) for locator in locators)))

    return ask(locate)


# -- arguments and the report -------------------------------------------------------------------


def find(node: str, everyone: list[NodeOnPort], where: str) -> NodeOnPort:
    """The node called `node` (tenant/name, a unique name, or its id)."""
    found = [n for n in everyone if node in (n.label, n.label.split("/", 1)[1], n.node.node_id)]
    if not found:
        known = ", ".join(sorted(n.label for n in everyone)) or "none"
        raise NviError(f"no node {node!r} on {where} (nodes: {known})")
    if len(found) > 1:
        names = ", ".join(sorted(n.label for n in found))
        raise NviError(f"node name {node!r} is ambiguous: say which, as tenant/name ({names})")
    return found[0]


def ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise NviError(f"{what} {text!r} is not an IPv4 address") from None


def port_name(view: ServerView, in_port: int | str) -> str:
    if in_port == view.uplink:
        return view.config.uplink
    node = view.nodes[int(in_port)]
    return f"{node.label}'s port {node.port}"


def onward(view: ServerView, found: t.Hop) -> t.Probe | None:
    """The packet as it leaves the server for another one, or None when it stays here."""
    decision = found.decision
    if found.verdict.outcome == t.Outcome.UPLINK:
        return found.probe.rewritten(found.trace.final)
    if found.verdict.outcome == t.Outcome.CONTROLLER and decision and decision.remote_locator:
        # What the conversation the controller would install sends (not yet on the switch).
        egress = view.nodes[int(found.in_port)].node
        packet = found.probe
        return replace(
            packet, eth_src=view.mac, ip_src=egress.locator, ip_dst=decision.remote_locator
        )
    return None


def trace_server(
    config_file: str | Path,
    node: str,
    destination: str,
    protocol: str = "icmp",
    port: int | None = None,
    from_ip: str | None = None,
) -> dict[str, Any]:
    """Follow one packet from `node` through this server only, from its controller config."""
    destination = ipv4(destination, "destination")
    config = load_config(config_file)
    view = read_server(config.address, config, config_ask(config))
    source = find(node, list(view.nodes.values()), f"this server ({config.address})")
    labels = {n.node.locator: n.label for n in view.nodes.values()}
    labels.setdefault(destination, "")  # a refused egress flow's cookie hashes the address
    packet = probe(source.node, destination, protocol, port, from_ip)
    found = hop(view, source.node.port, packet, labels, predicted=False)
    hops = [found]
    leaving = onward(view, found)
    return {
        "server": config.address,
        "node": source.label,
        "destination": destination,
        "protocol": protocol,
        "port": port,
        "outcome": t.final_outcome(hops),
        "verdict": t.one_line(source.label, packet, hops),
        "hops": [found.to_json() | {"in_port_name": port_name(view, found.in_port)}],
        "next": None
        if leaving is None
        else (f"the packet leaves towards locator {leaving.ip_dst}; run nvi trace on that server"),
    }
