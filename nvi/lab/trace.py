"""`nvi trace`: why a tenant packet is delivered or dropped, server by server, in a lab.

The side-effecting half of the trace: it reads each server's node ports from its OVSDB, runs
Open vSwitch's own `ofproto/trace` against that server's private vswitchd (inside its
namespace), and asks the directory what the server's controller would ask, with the
own credential (its enrolment). Everything it concludes is `openflow.trace`'s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import click

from federation.client import DirectoryClient
from federation.errors import NotFound
from federation.models import Resolution
from nvi.core.errors import NviError
from nvi.core.output import console, print_json, print_table
from nvi.core.ports import NAME, NodePort, vsctl_rows
from nvi.lab import links
from nvi.lab.net import LabNet
from nvi.lab.ovs import BRIDGE, UPLINK, OvsInstance
from nvi.lab.spec import Server, load_lab
from openflow import flows as f
from openflow import trace as t
from openflow.service import load_config as load_controller_config

T = TypeVar("T")


@dataclass(frozen=True)
class NodeOnPort:
    server: str
    port: str
    node: f.LocalNode
    label: str  # tenant/name


@dataclass(frozen=True)
class ServerView:
    """What the trace needs of one server: its switch, MAC, uplink and node ports."""

    server: Server
    ovs: OvsInstance
    mac: str
    uplink: int
    nodes: dict[int, NodeOnPort]

    def node_at(self, locator: str) -> NodeOnPort | None:
        return next((n for n in self.nodes.values() if n.node.locator == locator), None)

    def facts(self, net: LabNet) -> f.Server:
        """The server as its controller sees it: with the infrastructure from its own config
        (the directory's address, written there as the lab writes it, included)."""
        config = load_controller_config(net.rundir / self.server.name / "controller.toml")
        return f.Server(self.server.address, self.mac, self.uplink, tuple(config.infrastructure))


def trace(
    net: LabNet,
    node: str,
    destination: str,
    protocol: str = "icmp",
    port: int | None = None,
    from_ip: str | None = None,
) -> dict[str, Any]:
    """Follow one packet from `node` to `destination` through every server it reaches."""
    if net.lab.directory is None:
        raise NviError(f"lab {net.lab.name} has no directory, so it has no tenant nodes")
    if os.geteuid() != 0:
        raise NviError("tracing enters the lab's namespaces: run as root")
    destination = _ipv4(destination, "destination")
    views = {s.name: _read_server(net, s) for s in net.lab.servers}
    source = _find(node, views)
    labels = {n.node.locator: n.label for v in views.values() for n in v.nodes.values()}
    labels.setdefault(destination, "")  # a refused egress flow's cookie hashes the address
    local = source.node
    probe = t.Probe(
        eth_src=local.mac,
        eth_dst=f.gateway_mac(local.tenant, local.network),  # what it ARPs for any address
        ip_src=_ipv4(from_ip, "--from-ip") if from_ip else local.ip,
        ip_dst=destination,
        protocol=protocol,
        port=port,
    )
    view, in_port, predicted = views[source.server], local.port, False
    hops: list[t.Hop] = []
    for _ in views:  # each server at most once: the underlay does not loop
        hop = _hop(net, view, in_port, probe, labels, predicted)
        hops.append(hop)
        onward = hop.decision.remote_locator if hop.decision else None
        if hop.verdict.outcome == t.Outcome.UPLINK:
            sent = probe.rewritten(hop.trace.final)
        elif hop.verdict.outcome == t.Outcome.CONTROLLER and onward:
            # What the conversation the controller would install sends (not yet on the switch).
            egress = view.nodes[in_port].node
            sent = replace(probe, eth_src=view.mac, ip_src=egress.locator, ip_dst=onward)
            predicted = True
        else:
            break
        owner = next((v for v in views.values() if sent.ip_dst in v.server.locator_pool), None)
        if owner is None:
            break
        probe = replace(sent, eth_src=_last_hop_mac(net, view, owner), eth_dst=owner.mac)
        view, in_port = owner, owner.uplink
    first = hops[0].probe
    return {
        "lab": net.lab.name,
        "node": source.label,
        "destination": destination,
        "protocol": protocol,
        "port": port,
        "outcome": t.final_outcome(hops),
        "verdict": t.one_line(source.label, first, hops),
        "hops": [hop.to_json() | {"in_port_name": _port_name(views, hop)} for hop in hops],
    }


def _hop(
    net: LabNet,
    view: ServerView,
    in_port: int,
    probe: t.Probe,
    labels: dict[str, str],
    predicted: bool,
) -> t.Hop:
    result = t.parse(_ofproto_trace(view.ovs, probe.flow(in_port)))
    names = {number: n.label for number, n in view.nodes.items()}
    verdict = t.verdict(result, view.uplink, names)
    hop = t.Hop(view.server.name, in_port, probe, result, verdict, labels, predicted=predicted)
    hit = verdict.hit
    refused = hit is not None and hit.cookie >> f.COOKIE_CLASS_SHIFT == f.DENY
    if hit is not None and (verdict.outcome == t.Outcome.CONTROLLER or refused):
        # A first packet, or one a refusal dropped: what would the controller decide now?
        hop.decision = _decide(net, view, hit.table, in_port, probe, labels)
    return hop


def _decide(
    net: LabNet,
    view: ServerView,
    table: int,
    in_port: int,
    probe: t.Probe,
    labels: dict[str, str],
) -> t.Decision | None:
    """Ask the directory what the server's controller asks for a packet of this table."""
    if table == f.T_EGRESS and in_port in view.nodes:
        local = view.nodes[in_port].node
        answer = _resolve(net, view.server, probe.ip_dst, source=local.node_id)
        others = [n.node for n in view.nodes.values()]
        facts = view.facts(net)
        return t.egress_decision(local, probe.ip_dst, answer, others, labels, server=facts)
    if table == f.T_INGRESS:
        owner = view.node_at(probe.ip_dst)
        facts = view.facts(net)
        if owner is None:
            return t.ingress_decision(None, probe.ip_src, probe.ip_dst, None, labels, server=facts)
        answer = _resolve(net, view.server, locator=probe.ip_src, source=owner.node.node_id)
        return t.ingress_decision(
            owner.node, probe.ip_src, probe.ip_dst, answer, labels, server=facts
        )
    return None


# -- the server's switch ---------------------------------------------------------------------


def _read_server(net: LabNet, server: Server) -> ServerView:
    ns = net.netns(server.name)
    if ns not in links.list_netns():
        raise NviError(f"lab {net.lab.name} is not up ({ns} does not exist)")
    ovs = net.ovs(server)
    rows = vsctl_rows(
        ovs.vsctl("--format=json", "--columns=name,ofport,external_ids", "list", "Interface")
    )
    mac = ovs.vsctl("get", "interface", BRIDGE, "mac_in_use").strip().strip('"')
    uplink, found = 0, []
    for row in rows:
        name, ofport, ids = row["name"], row["ofport"], row["external_ids"]
        if name == UPLINK:
            uplink = ofport
        elif isinstance(ofport, int) and (port := NodePort.from_external_ids(ids)) is not None:
            found.append((name, ofport, port, ids.get(NAME)))
    names = _names(net, server, [p.locator for _, _, p, given in found if not given])
    nodes = {
        ofport: NodeOnPort(
            server.name,
            name,
            f.LocalNode(port=ofport, **asdict(port)),
            f"{port.tenant}/{given or names.get(port.locator) or port.node_id}",
        )
        for name, ofport, port, given in found
    }
    return ServerView(server, ovs, mac.lower(), uplink, nodes)


def _ofproto_trace(ovs: OvsInstance, flow: str) -> str:
    """`ovs-appctl ofproto/trace` on the server's own vswitchd, through the control socket its
    daemon was started with, from inside the server's namespace."""
    vswitchd = next(d for d in ovs.daemons() if d.name == "ovs-vswitchd")
    target = next(a for a in vswitchd.argv if a.startswith("--unixctl="))
    argv = ["ip", "netns", "exec", ovs.netns, "ovs-appctl", target.replace("--unixctl", "--target")]
    result = subprocess.run(
        [*argv, "ofproto/trace", BRIDGE, flow],
        capture_output=True,
        text=True,
        env={**os.environ, **ovs.env},
    )
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()[0]
        raise NviError(f"ofproto/trace in {ovs.netns} failed: {message}")
    return result.stdout


def _last_hop_mac(net: LabNet, sender: ServerView, receiver: ServerView) -> str:
    """The source MAC a packet from `sender` has when it reaches `receiver`: the sender's own
    on one cloud, else that of the router the receiver routes back through."""
    if sender.server.cloud == receiver.server.cloud:
        return sender.mac
    back = dict(net.lab.gateways({receiver.server.cloud}, receiver.server.name))
    gateway = back.get(net.lab.cloud(sender.server.cloud).subnet)
    cloud = receiver.server.cloud
    router = next((r for r in net.lab.routers if r.addresses.get(cloud) == gateway), None)
    if router is None:
        return sender.mac
    shown = links.run_in(net.netns(router.name), ["ip", "-j", "link", "show", "dev", cloud])
    return json.loads(shown.stdout)[0]["address"]


# -- the directory, as the server's controller asks it ----------------------------------------


def _ask(net: LabNet, server: Server, work: Callable[[DirectoryClient], Awaitable[T]]) -> T:
    """Run `work` with the credential of the server's controller: the directory answers
    exactly what that controller would be told."""
    return net.call_directory(work, token=net.server_token(server))


def _resolve(net: LabNet, server: Server, ip: str | None = None, **names: str) -> Resolution | None:
    """The directory's answer, or None when it knows no such destination in the tenant."""

    async def ask(client: DirectoryClient) -> Resolution | None:
        try:
            return await client.resolve(ip, **names)
        except NotFound:
            return None

    return _ask(net, server, ask)


def _names(net: LabNet, server: Server, locators: list[str]) -> dict[str, str]:
    """Node names by locator (the lab's namespace nodes write only the node's id on a port)."""
    if not locators:
        return {}

    async def locate(client: DirectoryClient) -> dict[str, str]:
        async def one(locator: str) -> tuple[str, str]:
            try:
                return locator, (await client.locate(locator)).node.name
            except NotFound:
                return locator, ""

        return dict(await asyncio.gather(*(one(locator) for locator in locators)))

    # Remote locators are other servers' nodes: only the lab's operator may name them.
    return net.call_directory(locate)


# -- arguments ------------------------------------------------------------------------------


def _find(node: str, views: dict[str, ServerView]) -> NodeOnPort:
    everyone = [n for v in views.values() for n in v.nodes.values()]
    found = [n for n in everyone if node in (n.label, n.label.split("/", 1)[1], n.node.node_id)]
    if not found:
        known = ", ".join(sorted(n.label for n in everyone)) or "none"
        raise NviError(f"no node {node!r} on the lab's servers (nodes: {known})")
    if len(found) > 1:
        names = ", ".join(sorted(n.label for n in found))
        raise NviError(f"node name {node!r} is ambiguous: say which, as tenant/name ({names})")
    return found[0]


def _ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise NviError(f"{what} {text!r} is not an IPv4 address") from None


def _port_name(views: dict[str, ServerView], hop: t.Hop) -> str:
    view = views[hop.server]
    if hop.in_port == view.uplink:
        return UPLINK
    node = view.nodes[int(hop.in_port)]
    return f"{node.label}'s port {node.port}"


# -- the command ----------------------------------------------------------------------------


@click.command(name="trace")
@click.argument("lab_file", metavar="LAB_FILE", type=click.Path(dir_okay=False))
@click.argument("node")
@click.argument("destination_ip")
@click.option("--tcp", type=click.IntRange(1, 65535), metavar="PORT", help="a TCP packet to PORT")
@click.option("--udp", type=click.IntRange(1, 65535), metavar="PORT", help="a UDP packet to PORT")
@click.option("--from-ip", metavar="IP", help="a source address other than the node's own")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def trace_command(
    lab_file: str,
    node: str,
    destination_ip: str,
    tcp: int | None,
    udp: int | None,
    from_ip: str | None,
    output: str,
) -> None:
    """Explain which flows a packet from NODE to DESTINATION_IP hits on each server, and why
    it is delivered, sent to a controller or dropped (an ICMP echo unless --tcp/--udp).
    Nothing is sent: Open vSwitch traces the packet through the flows it holds."""
    if tcp and udp:
        raise NviError("--tcp and --udp exclude each other")
    protocol, port = ("tcp", tcp) if tcp else ("udp", udp) if udp else ("icmp", None)
    report = trace(LabNet(load_lab(lab_file)), node, destination_ip, protocol, port, from_ip)
    if output == "json":
        print_json(report)
        return
    for hop in report["hops"]:
        predicted = " (predicted: after the controller installs the conversation)"
        print_table(
            f"{hop['server']}{predicted if hop['predicted'] else ''}: in on "
            f"{hop['in_port_name']} ({hop['in_port']}): {hop['headers']}",
            hop["flows"],
            ["table", "priority", "cookie", "role", "owner", "actions"],
        )
        if hop["controller"] and hop["controller"]["asked"]:
            console.print(f"  directory: {hop['controller']['asked']}", soft_wrap=True)
        console.print(f"  → {hop['summary']}\n", soft_wrap=True)
    console.print(f"[bold]{report['verdict']}[/]", soft_wrap=True)  # one line, never wrapped
