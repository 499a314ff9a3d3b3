"""`nvi trace LAB_FILE`: why a tenant packet is delivered or dropped, server by server, in a lab.

It follows the packet from server to server across the lab's underlay; what happens on each
one is `nvi.trace`'s, from that server's own controller config, asking the directory with the
server's own credential (its enrolment) from the directory's namespace.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from nvi import trace as one
from nvi.core.errors import NviError
from nvi.lab import links
from nvi.lab.net import LabNet
from nvi.lab.spec import Server
from openflow import trace as t
from openflow.service import load_config as load_controller_config


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
    destination = one.ipv4(destination, "destination")
    servers = {s.name: s for s in net.lab.servers}
    views = {s.name: _read_server(net, s) for s in net.lab.servers}
    everyone = [n for v in views.values() for n in v.nodes.values()]
    source = one.find(node, everyone, "the lab's servers")
    labels = {n.node.locator: n.label for n in everyone}
    labels.setdefault(destination, "")  # a refused egress flow's cookie hashes the address
    probe = one.probe(source.node, destination, protocol, port, from_ip)
    view, in_port, predicted = views[source.server], source.node.port, False
    hops: list[t.Hop] = []
    for _ in views:  # each server at most once: the underlay does not loop
        hop = one.hop(view, in_port, probe, labels, predicted)
        hops.append(hop)
        sent = one.onward(view, hop)
        if sent is None:
            break
        predicted = predicted or hop.verdict.outcome == t.Outcome.CONTROLLER
        owner = next((s for s in servers.values() if sent.ip_dst in s.locator_pool), None)
        if owner is None:
            break
        sender = servers[view.name]
        probe = replace(sent, eth_src=_last_hop_mac(net, sender, owner, view.mac))
        view, in_port = views[owner.name], views[owner.name].uplink
        probe = replace(probe, eth_dst=view.mac)
    first = hops[0].probe
    return {
        "lab": net.lab.name,
        "node": source.label,
        "destination": destination,
        "protocol": protocol,
        "port": port,
        "outcome": t.final_outcome(hops),
        "verdict": t.one_line(source.label, first, hops),
        "hops": [
            hop.to_json() | {"in_port_name": one.port_name(views[hop.server], hop.in_port)}
            for hop in hops
        ],
    }


def _read_server(net: LabNet, server: Server) -> one.ServerView:
    """The server through its own controller config, asking the directory as its controller
    does (from the directory's namespace: the lab's machine is not on the underlay)."""
    ns = net.netns(server.name)
    if ns not in links.list_netns():
        raise NviError(f"lab {net.lab.name} is not up ({ns} does not exist)")
    config = load_controller_config(net.rundir / server.name / "controller.toml")
    token = net.server_token(server)

    def ask(work: Any) -> Any:
        return net.call_directory(work, token=token)

    def names(locators: list[str]) -> dict[str, str]:
        # The lab's namespace nodes are named by the lab's operator, with its credential.
        return one.locator_names(net.call_directory, locators)

    return one.read_server(server.name, config, ask, names)


def _last_hop_mac(net: LabNet, sender: Server, receiver: Server, sender_mac: str) -> str:
    """The source MAC a packet from `sender` has when it reaches `receiver`: the sender's own
    on one cloud, else that of the router the receiver routes back through."""
    if sender.cloud == receiver.cloud:
        return sender_mac
    back = dict(net.lab.gateways({receiver.cloud}, receiver.name))
    gateway = back.get(net.lab.cloud(sender.cloud).subnet)
    cloud = receiver.cloud
    router = next((r for r in net.lab.routers if r.addresses.get(cloud) == gateway), None)
    if router is None:
        return sender_mac
    shown = links.run_in(net.netns(router.name), ["ip", "-j", "link", "show", "dev", cloud])
    return json.loads(shown.stdout)[0]["address"]
