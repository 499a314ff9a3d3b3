"""Explain what a server's switch does with a packet, in NVI's terms.

The ground truth is Open vSwitch's own `ofproto/trace`: it runs a packet through the flows the
switch really holds, without sending it or touching counters. This module is the pure part of
`nvi trace`: it builds the packet to trace, parses the trace's text, names each flow from its
cookie (`openflow.flows`' layout) and says in words what became of the packet, and what the
controller would decide for a first packet given the directory's answer: the controller's own
decision functions (`openflow.decide`) decide, this module only puts their verdict in words.
`nvi.trace` runs the traces and asks the directory; unit tests feed this module captured
real outputs.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from federation.models import Outbound, Resolution
from nvi.core.ports import HOST_COOKIE
from openflow import decide
from openflow import flows as f

# The source port of traced TCP and UDP packets: any ephemeral port; no NVI flow matches L4.
EPHEMERAL_PORT = 40000


@dataclass(frozen=True)
class Probe:
    """The packet to trace: an ICMP echo request, or a TCP/UDP packet to `port`."""

    eth_src: str
    eth_dst: str
    ip_src: str
    ip_dst: str
    protocol: str = "icmp"
    port: int | None = None
    ttl: int = 64

    def flow(self, in_port: int | str) -> str:
        """The packet in `ofproto/trace`'s flow syntax, entering the bridge on `in_port`."""
        l4 = {
            "icmp": "icmp_type=8,icmp_code=0",
            "tcp": f"tcp_src={EPHEMERAL_PORT},tcp_dst={self.port}",
            "udp": f"udp_src={EPHEMERAL_PORT},udp_dst={self.port}",
        }[self.protocol]
        return (
            f"{self.protocol},in_port={in_port},dl_src={self.eth_src},dl_dst={self.eth_dst},"
            f"nw_src={self.ip_src},nw_dst={self.ip_dst},nw_ttl={self.ttl},{l4}"
        )

    def rewritten(self, headers: Mapping[str, str]) -> Probe:
        """This packet with the addresses a switch left in it (a trace's final flow)."""
        return replace(
            self,
            eth_src=headers.get("dl_src", self.eth_src),
            eth_dst=headers.get("dl_dst", self.eth_dst),
            ip_src=headers.get("nw_src", self.ip_src),
            ip_dst=headers.get("nw_dst", self.ip_dst),
        )

    def describe(self) -> str:
        what = "icmp echo" if self.protocol == "icmp" else f"{self.protocol}/{self.port}"
        return f"{self.ip_src} → {self.ip_dst} {what} ({self.eth_src} → {self.eth_dst})"


# -- ofproto/trace's text ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One table the packet visited: the flow it matched (priority None: no flow matched)."""

    table: int
    priority: int | None
    cookie: int
    match: str
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Trace:
    flow: dict[str, str]
    hits: tuple[Hit, ...]
    final: dict[str, str]  # the headers after all actions (the same as `flow` if unchanged)
    datapath_actions: str


_STEP = re.compile(r"^\s*(\d+)\. (.*)$")
_RULE = re.compile(r"^(?:(?P<match>.*), )?priority (?P<priority>\d+)(?:, cookie (?P<cookie>\S+))?$")


def parse(text: str) -> Trace:
    """Parse `ovs-appctl ofproto/trace` output (Open vSwitch 2.8 and later)."""
    flow: dict[str, str] | None = None
    final: dict[str, str] | None = None
    datapath = ""
    steps: list[tuple[int, str, list[str]]] = []
    actions: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("Flow: "):
            flow = parse_flow(line.removeprefix("Flow: "))
        elif line.startswith("Final flow: "):
            rest = line.removeprefix("Final flow: ")
            final = None if rest == "unchanged" else parse_flow(rest)
        elif line.startswith("Datapath actions: "):
            datapath = line.removeprefix("Datapath actions: ")
        elif step := _STEP.match(line):
            actions = []
            steps.append((int(step[1]), step[2].strip(), actions))
        elif not stripped or not line.startswith(" "):
            actions = None  # a blank line or a heading ends a table's action list
        elif actions is not None and not stripped.startswith(("->", ">>")):
            actions.append(stripped)  # notes ("-> ... is now ...") are not actions
    if flow is None:
        raise ValueError(f"not an ofproto/trace output: {text[:200]!r}")
    hits = tuple(_hit(table, rule, tuple(acts)) for table, rule, acts in steps)
    return Trace(flow, hits, final if final is not None else flow, datapath)


def _hit(table: int, rule: str, actions: tuple[str, ...]) -> Hit:
    if rule.startswith("No match"):
        return Hit(table, None, 0, "", actions)
    parsed = _RULE.match(rule)
    if parsed is None:
        raise ValueError(f"unexpected rule in ofproto/trace output: {rule!r}")
    cookie = int(parsed["cookie"], 16) if parsed["cookie"] else 0
    return Hit(table, int(parsed["priority"]), cookie, parsed["match"] or "", actions)


def parse_flow(text: str) -> dict[str, str]:
    """`icmp,in_port=2,dl_src=...` as {field: value}; bare keywords (`icmp`) map to ""."""
    fields = {}
    for token in text.strip().split(","):
        key, _, value = token.partition("=")
        fields[key] = value
    return fields


# -- cookies ------------------------------------------------------------------------------


def decode_cookie(cookie: int, labels: Mapping[str, str]) -> str:
    """Whose flow it is, from its cookie. `labels` names the strings the cookie's hashes may
    stand for (locators, tenant addresses), e.g. {"198.51.100.64": "red/red11"}."""
    if cookie == HOST_COOKIE:
        return "the lab's host flows"
    kind = cookie >> f.COOKIE_CLASS_SHIFT
    local = _unhash((cookie & f.LOCAL_MASK) >> 32, labels, 0xFFFFFF)
    remote = _unhash(cookie & f.REMOTE_MASK, labels, 0xFFFFFFFF)
    if kind == f.BASE:
        return f"base: port of {local}" if cookie & f.LOCAL_MASK else "base: the server"
    if kind == f.PAIR:
        return f"conversation {local} ⇄ {remote}"
    if kind == f.DENY:
        return f"refused {local} → {remote}"
    if kind == f.OUTBOUND:
        return f"outbound {local} → {remote} (source NAT)"
    return "not NVI's" if cookie else "not NVI's (no cookie)"


def _unhash(value: int, labels: Mapping[str, str], mask: int) -> str:
    for text, label in labels.items():
        if zlib.crc32(text.encode()) & mask == value:
            return f"{label} ({text})" if label else text
    return f"unknown (hash {value:#x})"


def role(hit: Hit) -> str:
    """What a flow does in NVI's pipeline (`openflow.flows`' tables), in a few words."""
    kind = hit.cookie >> f.COOKIE_CLASS_SHIFT
    actions = ",".join(hit.actions)
    if hit.priority is None:
        return "no flow matched: drop"
    if hit.cookie == HOST_COOKIE:
        return "the server's own traffic"
    if kind == f.PAIR:
        return "egress: rewrite and send" if hit.table == f.T_EGRESS else "ingress: restore"
    if kind == f.DENY:
        return "refused conversation: drop"
    if kind == f.OUTBOUND:
        if hit.table != f.T_EGRESS:
            return "outbound reply: restore"
        if f"table={f.T_REPLY_ONLY}" in actions:
            return "outbound, replies only: through conntrack to the reply-only table"
        if f":{f.SNAT_PORTS[0]}-" in actions:
            return "outbound: source-NAT to the server's address and send"
        return "outbound: NAT 1:1 to the node's floating address and send"
    if kind != f.BASE:
        return "not NVI's"
    if hit.table == f.T_REPLY_ONLY:
        return (
            "not a reply of a known connection: drop"
            if hit.priority == f.PRIO_MISS
            else ("a reply of a connection that came in: out the uplink")
        )
    if hit.priority == f.PRIO_MISS:
        if hit.table == f.T_OUTBOUND_RETURN:
            return "no outbound connection: the server's own traffic"
        return "default drop" if hit.table == f.T_CLASSIFY else "miss: to the controller"
    if hit.table == f.T_OUTBOUND_RETURN and hit.priority == f.PRIO_RESTORE:
        return "after NAT: restore the node's headers and deliver"
    if hit.priority == f.PRIO_ALLOW:
        if f"goto_table:{f.T_EGRESS}" in hit.actions:
            return "anti-spoofing passed: own MAC and IP"
        if "ct(" in actions:
            return "to a floating address: conntrack NATs it to the node's locator"
        return "to a locator of this server"
    return {
        f.PRIO_PUBLISHED: "to a published port: conntrack NATs it to the node's locator",
        f.PRIO_HOST_ARP_REPLY: "ARP reply to the server",
        f.PRIO_OUTBOUND_RETURN: "to the server: conntrack undoes outbound NAT",
        f.PRIO_DHCP: "DHCP request: to the controller",
        f.PRIO_DNS: "DNS query to the gateway: to the controller",
        f.PRIO_ARP_OWN: "ARP for the node's own address: drop",
        f.PRIO_ARP_ANSWER: "ARP answer",
        f.PRIO_ANTI_SPOOF: "anti-spoofing: drop",
    }.get(hit.priority, "base flow")


# -- what became of the packet -------------------------------------------------------------


class Outcome(StrEnum):
    DELIVERED = "delivered"  # out a node's port
    UPLINK = "uplink"  # out the uplink, onto the underlay
    CONTROLLER = "controller"  # a packet-in: the controller decides
    DROPPED = "dropped"
    OTHER = "other"  # the server itself, an ARP answer, a port that is no node's


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    hit: Hit | None  # the flow that decided
    port: int | str | None = None


def outputs(hit: Hit) -> list[int | str]:
    """The ports a flow's actions send to: numbers, or LOCAL, IN_PORT, CONTROLLER."""
    ports: list[int | str] = []
    for action in hit.actions:
        target = action.removeprefix("output:")
        if target.isdigit():
            ports.append(int(target))
        elif target in (f.LOCAL, f.IN_PORT):
            ports.append(target)
        elif action.upper().startswith(f.CONTROLLER):
            ports.append(f.CONTROLLER)
    return ports


def verdict(trace: Trace, uplink: int, nodes: Mapping[int, str]) -> Verdict:
    """What the switch did with the packet; `nodes` names this server's node ports."""
    for hit in trace.hits:
        sent = outputs(hit)
        if f.CONTROLLER in sent:
            return Verdict(Outcome.CONTROLLER, _why_controller(hit), hit, f.CONTROLLER)
        for port in sent:
            if isinstance(port, int) and port in nodes:
                return Verdict(Outcome.DELIVERED, f"out {nodes[port]}'s port", hit, port)
            if port == uplink:
                return Verdict(Outcome.UPLINK, "out the uplink, onto the underlay", hit, port)
            if port == f.LOCAL:
                return Verdict(Outcome.OTHER, "to the server itself", hit, port)
            if port == f.IN_PORT:
                return Verdict(Outcome.OTHER, "answered back out of its own port", hit, port)
            return Verdict(Outcome.OTHER, f"out port {port}, which is no node's", hit, port)
    last = trace.hits[-1] if trace.hits else None
    return Verdict(Outcome.DROPPED, _why_dropped(last), last)


def _why_controller(hit: Hit) -> str:
    if hit.table == f.T_EGRESS:
        return "first packet of a conversation: no egress flow for this node and destination yet"
    if hit.table == f.T_INGRESS:
        return "first packet from a new peer: no ingress flow for this pair of locators yet"
    if hit.priority == f.PRIO_DHCP:
        return "a DHCP request: the controller answers it from the port's facts"
    if hit.priority == f.PRIO_DNS:
        return "a DNS query: the controller answers the names of the node's tenant"
    if hit.priority == f.PRIO_HOST_ARP_REPLY:
        return "an ARP reply to the server: the controller learns a next hop's MAC"
    return "to the controller"


def _why_dropped(hit: Hit | None) -> str:
    if hit is None or hit.priority is None:
        return "no flow matches it and the table has no miss flow"
    kind = hit.cookie >> f.COOKIE_CLASS_SHIFT
    if kind == f.DENY:
        return (
            "the controller refused this conversation (the destination is unknown in the "
            f"tenant, or policy denies it) and drops it for up to {f.DENY_HARD_TIMEOUT} s"
        )
    if kind == f.BASE and hit.table == f.T_CLASSIFY:
        if hit.priority == f.PRIO_ANTI_SPOOF:
            return (
                "a node may send only IPv4 from its own MAC and address, truthful ARP requests "
                "and DHCP"
            )
        if hit.priority == f.PRIO_ARP_OWN:
            return "ARP for a node's own address is never answered or forwarded"
        if hit.priority == f.PRIO_MISS:
            return (
                "not from a node's port, not to one of this server's locators, not the server's "
                "own traffic"
            )
    return "the flow has no output action"


# -- what the controller would do with a first packet ------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The controller's decision in words: `openflow.decide`'s verdict for the directory's
    answer (None: the directory does not know the destination in the source's tenant)."""

    allowed: bool
    reason: str
    short: str  # a few words for the one-line verdict
    asked: str = ""  # the question to the directory, if any
    remote_locator: str | None = None  # an allowed conversation to another server's node
    local_port: int | None = None  # an allowed conversation delivered on this server


_DENY = f"the controller would drop it and install a drop flow for {f.DENY_HARD_TIMEOUT} s"
_BACKOFF = (
    f"the directory could not answer: the controller would drop the pair for "
    f"{f.BACKOFF_HARD_TIMEOUT} s and ask again"
)
# Without the server's own facts no address is known as infrastructure but this placeholder's
# (no locator is ever 0.0.0.0), so a refusal of infrastructure is not predicted.
_UNKNOWN_SERVER = f.Server(address="0.0.0.0", mac="00:00:00:00:00:00", uplink=0)

Step = Callable[[decide.Answer], decide.Result]
_ANY_MAC = "00:00:00:00:00:00"  # the next hop's MAC changes the flows, never the way out
# The way out of a first packet to an outside address: why, and in a few words
_WAYS_OUT = {
    decide.Outcome.FLOATING: (
        "{me} has floating address {node.floating}: the controller would NAT the pair 1:1 to "
        "it and send the packet out the uplink, whatever {node.network}'s outbound access",
        "would send it out from floating address {node.floating} to {ip}",
    ),
    decide.Outcome.OUTBOUND: (
        "{node.network} has outbound access: the controller would source-NAT the pair to this "
        "server's address and send the packet out the uplink",
        "would send it out through source NAT to {ip}",
    ),
    decide.Outcome.REPLY_ONLY: (
        "{me} publishes ports but {node.network} has no outbound access: the controller would "
        "let out only replies of connections that came in through them (a connection of its "
        "own is dropped)",
        "would let out only replies to {ip}",
    ),
}


def _ask(step: Step, answer: decide.Answer, me: str) -> tuple[str, decide.Result]:
    """Run the decision as the controller does: the question it asks (if any), then the
    verdict for the directory's answer."""
    question = step(decide.NOT_ASKED)
    if not isinstance(question, decide.Lookup):
        return "", question
    if question.ip is not None:
        return f"resolve {question.ip} for {me}", step(answer)
    return f"resolve locator {question.locator} for {me}", step(answer)


def _ask_outbound(
    step: Step,
    asked: str,
    result: decide.Result,
    outbound: Outbound | None,
    me: str,
    local: f.LocalNode,
) -> tuple[str, decide.Result]:
    """No node holds the address: the controller's second question, whether it may go out."""
    if not (isinstance(result, decide.Lookup) and result.outbound):
        return asked, result
    answer = outbound or Outbound(allowed=False, outside=False, revision=0)
    question = f"{asked}; may {me} reach {result.ip} outside (source NAT)"
    if local.floating or local.published:
        question = f"{asked}; is {result.ip} outside its tenant ({me} has ways in)"
    return question, step(answer)


def egress_decision(
    local: f.LocalNode,
    destination_ip: str,
    answer: Resolution | None,
    nodes: Sequence[f.LocalNode],
    labels: Mapping[str, str],
    *,
    server: f.Server | None = None,
    outbound: Outbound | None = None,
) -> Decision:
    """What `decide.egress` makes of a first packet from `local` to `destination_ip`
    (`outbound`: the directory's answer when no node holds it; none counts as not allowed)."""
    facts = decide.Facts(server or _UNKNOWN_SERVER, tuple(nodes))
    me = labels.get(local.locator) or local.node_id

    def step(known: decide.Answer) -> decide.Result:
        return decide.egress(facts, local, destination_ip, known)

    asked, result = _ask(step, answer, me)
    asked, result = _ask_outbound(step, asked, result, outbound, me, local)
    target = answer.destination if answer is not None else None
    name = f"{target.tenant}/{target.name}" if target is not None else destination_ip
    if isinstance(result, decide.NextHop) and target is None:
        assert outbound is not None, "a way out needs the directory's outbound answer"
        way = decide.egress(facts, local, destination_ip, outbound, _ANY_MAC)
        assert isinstance(way, decide.Decision)
        reason, summary = _WAYS_OUT[way.outcome]
        outside = f"{destination_ip} is outside tenant {local.tenant}"
        return Decision(
            True,
            f"{outside} and " + reason.format(me=me, node=local),
            summary.format(ip=destination_ip, node=local),
            asked,
        )
    if isinstance(result, decide.NextHop):
        return Decision(
            True,
            f"{name} is at locator {result.locator} and policy allows it: the controller would "
            f"install the conversation {local.locator} ⇄ {result.locator} and send the packet on",
            f"would install the conversation to {name}",
            asked,
            remote_locator=result.locator,
        )
    assert isinstance(result, decide.Decision)
    if result.outcome == decide.Outcome.ALLOWED:
        peer = facts.node_at(result.pairs[0].remote_locator)
        return Decision(
            True,
            f"{name} is on this server and policy allows it: the controller would install the "
            "conversation and deliver to its port",
            f"would install the conversation and deliver to {name}",
            asked,
            local_port=peer.port if peer else None,
        )
    if result.outcome == decide.Outcome.NOT_IN_TENANT:
        unknown = f"no node has {destination_ip} in tenant {local.tenant}"
        return Decision(False, f"{unknown}: {_DENY}", f"denied ({unknown})", asked)
    if result.outcome == decide.Outcome.POLICY:
        refused = f"policy does not allow {me} → {name} (another network, no link)"
        return Decision(False, f"{refused}: {_DENY}", "denied by policy", asked)
    return _refused(result, asked)


def ingress_decision(
    local: f.LocalNode | None,
    source_locator: str,
    local_locator: str,
    answer: Resolution | None,
    labels: Mapping[str, str],
    *,
    server: f.Server | None = None,
) -> Decision:
    """What `decide.ingress` makes of a first packet from `source_locator` to `local_locator`
    (`local`: the node of this server that holds it, if any)."""
    facts = decide.Facts(server or _UNKNOWN_SERVER, (local,) if local else ())
    me = (labels.get(local.locator) or local.node_id) if local else local_locator
    asked, result = _ask(
        lambda known: decide.ingress(facts, source_locator, local_locator, known), answer, me
    )
    source = f"{answer.destination.tenant}/{answer.destination.name}" if answer else source_locator
    if isinstance(result, decide.NextHop):
        return Decision(
            True,
            f"{source} is at locator {source_locator} and policy allows it: the controller would "
            f"install the conversation {local_locator} ⇄ {source_locator} and deliver to {me}",
            f"would install the return half and deliver to {me}",
            asked,
            local_port=local.port if local else None,
        )
    assert isinstance(result, decide.Decision)
    if result.outcome == decide.Outcome.UNKNOWN_LOCATOR:
        unknown = f"no node of this server holds locator {local_locator}"
        return Decision(False, f"{unknown}: the controller drops it", f"dropped ({unknown})")
    if result.outcome == decide.Outcome.NOT_IN_TENANT:
        tenant = local.tenant if local else "?"
        unknown = f"locator {source_locator} is no node of tenant {tenant}"
        return Decision(False, f"{unknown}: {_DENY}", f"denied ({unknown})", asked)
    if result.outcome == decide.Outcome.POLICY:
        refused = f"policy does not allow {source} → {me}"
        return Decision(False, f"{refused}: {_DENY}", "denied by policy", asked)
    return _refused(result, asked)


def _refused(result: decide.Decision, asked: str) -> Decision:
    """The outcomes egress and ingress word alike: infrastructure, no directory."""
    if result.outcome == decide.Outcome.INFRASTRUCTURE:
        why = f"{result.detail} is an infrastructure address (this server, the directory, a router)"
        return Decision(False, f"{why}: {_DENY}", "refused (infrastructure)", asked)
    if result.outcome == decide.Outcome.DIRECTORY_UNAVAILABLE:
        return Decision(False, _BACKOFF, "backing off (directory unavailable)", asked)
    raise ValueError(f"unexpected outcome {result.outcome}")


# -- the whole path -----------------------------------------------------------------------------


@dataclass
class Hop:
    """One server on the packet's way."""

    server: str
    in_port: int | str
    probe: Probe
    trace: Trace
    verdict: Verdict
    labels: Mapping[str, str]
    decision: Decision | None = None
    predicted: bool = False  # the packet is what a conversation not yet installed would send

    def meaning(self, hit: Hit | None) -> str:
        if hit is None or hit.priority is None:
            return "no flow"
        return decode_cookie(hit.cookie, self.labels)

    def summary(self) -> str:
        """One phrase: what this server does with the packet."""
        v, final = self.verdict, self.trace.final
        if v.outcome == Outcome.UPLINK:
            text = f"rewritten to {final.get('nw_src')} → {final.get('nw_dst')}, out the uplink"
        elif v.outcome == Outcome.DROPPED:
            by = (
                f" in table {v.hit.table} by “{role(v.hit)}” ({self.meaning(v.hit)})"
                if v.hit
                else ""
            )
            text = f"dropped{by}: {v.reason}"
            if self.decision is not None:
                text += f"; the directory now says: {self.decision.short}"
        elif v.outcome == Outcome.DELIVERED:
            text = f"delivered {v.reason}"
        elif self.decision is not None:
            text = f"to the controller ({v.reason}): {self.decision.reason}"
        else:
            text = v.reason
        return f"{self.server}: {'(predicted) ' if self.predicted else ''}{text}"

    def short(self) -> str:
        """A few words for the one-line verdict."""
        v, final = self.verdict, self.trace.final
        if v.outcome == Outcome.UPLINK:
            text = f"rewrites to {final.get('nw_src')} → {final.get('nw_dst')}, out the uplink"
        elif v.outcome == Outcome.DROPPED:
            text = f"drops it ({role(v.hit) if v.hit else 'no flow'})"
            if self.decision is not None:
                text += f", {self.decision.short}"
        elif v.outcome == Outcome.DELIVERED:
            text = f"delivers it {v.reason}"
        elif self.decision is not None:
            text = f"to its controller, {self.decision.short}"
        else:
            text = v.reason
        return f"{self.server} {'(predicted) ' if self.predicted else ''}{text}"

    def to_json(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "server": self.server,
            "in_port": self.in_port,
            "packet": self.probe.flow(self.in_port),
            "headers": self.probe.describe(),
            "predicted": self.predicted,
            "flows": [
                {
                    "table": hit.table,
                    "priority": hit.priority,
                    "cookie": f"{hit.cookie:#x}",
                    "role": role(hit),
                    "owner": self.meaning(hit),
                    "match": hit.match,
                    "actions": list(hit.actions),
                }
                for hit in self.trace.hits
            ],
            "final_flow": self.trace.final,
            "datapath_actions": self.trace.datapath_actions,
            "outcome": str(self.verdict.outcome),
            "reason": self.verdict.reason,
            "port": self.verdict.port,
            "controller": None
            if decision is None
            else {
                "asked": decision.asked,
                "allowed": decision.allowed,
                "decision": decision.reason,
                "remote_locator": decision.remote_locator,
                "local_port": decision.local_port,
            },
            "summary": self.summary(),
        }


def final_outcome(hops: Sequence[Hop]) -> str:
    """The packet's fate in a word: `delivered` or `dropped` by the flows there are, `allowed` or
    `denied` by a controller it reaches first, `uplink` when it leaves for no server of the lab."""
    last = hops[-1]
    if last.verdict.outcome == Outcome.CONTROLLER and last.decision is not None:
        return "allowed" if last.decision.allowed else "denied"
    return str(last.verdict.outcome)


def one_line(source: str, probe: Probe, hops: Sequence[Hop]) -> str:
    what = "icmp echo" if probe.protocol == "icmp" else f"{probe.protocol}/{probe.port}"
    path = "; ".join(hop.short() for hop in hops)
    return f"{final_outcome(hops)}: {source} → {probe.ip_dst} ({what}): {path}"
