"""The checks a run makes: tenants reach their own nodes across servers, with the full MTU, and
never an address only another tenant holds."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass

from mininet.node import Host

from nvi.mininet.net import NviNet
from nvi.mininet.topo import NODE, SERVER, NviTopo

BANNER_PORT = 7000
# Each node answers TCP connections on BANNER_PORT with its name: who answered, not just "someone".
BANNER = (
    "import socket, sys\n"
    "server = socket.create_server(('', int(sys.argv[2])))\n"
    "while True:\n"
    "    connection, _ = server.accept()\n"
    "    connection.sendall(sys.argv[1].encode())\n"
    "    connection.close()\n"
)


Step = tuple[str, str, str | None]  # node, address, the node expected to answer (None: nobody)


@dataclass(frozen=True)
class Check:
    """One step's outcome. Kinds: `reach` (ping, and TCP answered by `expected`), `mtu`
    (1500-byte packets, DF set), `isolated` (an address only other tenants hold: no answer)."""

    kind: str
    source: str
    address: str
    expected: str | None
    ok: bool
    detail: str


def plan(topo: NviTopo) -> list[Step]:
    """Each node reaches a node of its own tenant on the next server, at an address other
    tenants use too; nodes on the first and last server try every address that only other
    tenants hold."""
    servers = topo.members(SERVER)
    nodes = {name: topo.nodeInfo(name) for name in topo.members(NODE)}
    steps: list[Step] = []
    for name, node in nodes.items():
        following = servers[(servers.index(node["server"]) + 1) % len(servers)]
        peers = [
            p
            for p, i in nodes.items()
            if i["tenant"] == node["tenant"] and i["server"] == following and p != name
        ]
        if peers:
            steps.append((name, nodes[peers[0]]["ip"], peers[0]))
    for name, node in nodes.items():
        if node["server"] not in (servers[0], servers[-1]):
            continue
        own = {i["ip"] for i in nodes.values() if i["tenant"] == node["tenant"]}
        foreign = sorted({i["ip"] for i in nodes.values()} - own)
        steps += [(name, address, None) for address in foreign]
    return steps


def run_checks(run: NviNet) -> list[Check]:
    """Carry out `plan`. Every node runs a tiny TCP server that answers with its own name, so
    a check sees who answered, not only that someone did."""
    assert run.net is not None
    hosts = {name: run.net[name] for name in run.members}
    banners = {}
    for name, host in hosts.items():
        host.cmd(f"{sys.executable} -c {shlex.quote(BANNER)} {run.name(name)} {BANNER_PORT} &")
        banners[name] = host.lastPid
    checks = []
    for source, address, expected in plan(run.topo):
        if expected is None:
            checks.append(_isolated(hosts[source], source, address))
        else:
            checks += _reach(hosts[source], source, address, expected, run.name(expected))
    # Interrupted before here, the shells are ended with their process groups by `down`.
    for name, pid in banners.items():
        hosts[name].cmd(f"kill {pid}")
    return checks


def _reach(host: Host, source: str, address: str, expected: str, banner: str) -> list[Check]:
    """A busy machine may be slow with a first packet: each part gets three tries."""
    pinged = _succeeds(host, f"ping -c 5 -i 0.2 -W 2 {address}", tries=3)
    answer = _banner(host, address, tries=3)
    detail = f"ping {'ok' if pinged else 'FAILED'}, TCP answered by {answer}"
    full = _succeeds(host, f"ping -c 3 -i 0.2 -W 2 -M do -s 1472 {address}", tries=3)
    return [
        Check("reach", source, address, expected, pinged and answer == banner, detail),
        Check("mtu", source, address, expected, full, "1500-byte packets, DF set: no overhead"),
    ]


def _isolated(host: Host, source: str, address: str) -> Check:
    """One try each: silence is the expected answer."""
    pinged = _succeeds(host, f"ping -c 3 -i 0.2 -W 1 {address}", tries=1)
    answer = _banner(host, address, tries=1)
    detail = f"ping {'ANSWERED' if pinged else 'no answer'}, TCP {answer or 'no answer'}"
    return Check("isolated", source, address, None, not (pinged or answer), detail)


def _succeeds(host: Host, command: str, tries: int) -> bool:
    for _ in range(tries):
        if host.cmd(f"{command} >/dev/null 2>&1; echo $?").strip().splitlines()[-1:] == ["0"]:
            return True
    return False


def _banner(host: Host, address: str, tries: int) -> str | None:
    """Who answers TCP on `address`, or None: `bash` connects through /dev/tcp."""
    for attempt in range(tries):
        answer = host.cmd(
            f"timeout 2 bash -c 'cat < /dev/tcp/{address}/{BANNER_PORT}' 2>/dev/null"
        ).strip()
        if answer:
            return answer
        if attempt + 1 < tries:
            time.sleep(1)
    return None
