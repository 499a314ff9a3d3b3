"""The data plane on the lab: 3 servers, 2 clouds, a directory, one controller per server.

Two tenants use the same 10.0.0.0/24 addresses on every server. Nodes are namespaces plugged
into the servers' bridges and published to the directory (`nvi.lab.nodes`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nvi.core.names import search_domain
from nvi.lab import links
from nvi.lab.net import LabNet
from nvi.lab.nodes import NetnsNode, add_node, remove_node, with_directory
from nvi.lab.process import running_pid
from nvi.lab.spec import load_lab
from openflow import flows as f
from tests.conftest import EXAMPLE_LAB

pytestmark = pytest.mark.root

PLACEMENT = {"s1": "10.0.0.11", "s2": "10.0.0.12", "s3": "10.0.0.13"}
TENANTS = ("red", "blue")


class Lab:
    def __init__(self, net: LabNet) -> None:
        self.net = net
        self.nodes: dict[str, NetnsNode] = {}

    def add(
        self, server: str, tenant: str, network: str, name: str, ip: str, dhcp: bool = False
    ) -> NetnsNode:
        node = with_directory(
            self.net, lambda c: add_node(self.net, c, server, tenant, network, name, ip, dhcp)
        )
        self.nodes[name] = node
        return node

    def run(self, node: str, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.nodes[node].netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def pings(self, node: str, ip: str, *extra: str) -> bool:
        return self.run(node, ["ping", "-c", "1", "-W", "1", *extra, ip]).returncode == 0

    def ofctl(self, server: str, *args: str) -> str:
        return self.net.ovs(self.net.lab.server(server)).ofctl(*args)


@contextlib.contextmanager
def running_lab(tmp_path_factory: pytest.TempPathFactory, **update: Any) -> Iterator[LabNet]:
    """The example lab under a fresh name (and `update`), removed whole afterwards."""
    spec = load_lab(EXAMPLE_LAB).model_copy(
        update={"name": "t" + uuid.uuid4().hex[:7], "portal": None, **update}
    )
    net = LabNet(spec, root=tmp_path_factory.mktemp("run"))
    try:
        net.up()
        yield net
    finally:
        net.down()
    assert [ns for ns in links.list_netns() if ns.startswith(net.prefix)] == []


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory) as net:
        lab = Lab(net)

        async def tenants(client) -> None:
            for tenant in TENANTS:
                await client.create_tenant(tenant)
                await client.create_network(tenant, "net", "10.0.0.0/24")
            await client.create_network("red", "dmz", "10.0.1.0/24")

        with_directory(net, tenants)
        for tenant in TENANTS:
            for server, ip in PLACEMENT.items():
                lab.add(server, tenant, "net", f"{tenant}{ip.rsplit('.', 1)[1]}", ip)
        lab.add("s3", "blue", "net", "blue14", "10.0.0.14")
        lab.add("s2", "red", "dmz", "reddmz", "10.0.1.5")
        yield lab


def test_every_allowed_pair_pings_across_servers_and_clouds(lab: Lab) -> None:
    failures = [
        (f"{tenant}{a[-2:]}", b)
        for tenant in TENANTS
        for a in PLACEMENT.values()
        for b in PLACEMENT.values()
        if a != b and not lab.pings(f"{tenant}{a[-2:]}", b)
    ]
    assert failures == []
    assert lab.pings("blue13", "10.0.0.14"), "two nodes on one server (s3) are switched locally"
    assert lab.pings("blue14", "10.0.0.13")


def test_lab_status_shows_each_controllers_metrics(lab: Lab) -> None:
    """`nvi lab status` scrapes each controller's /metrics inside its server's namespace: a
    new conversation's first packet is one more packet-in and allowed decision on both ends."""
    servers = lab.net.lab.server("s1"), lab.net.lab.server("s3")
    before = [lab.net.controller_metrics(server) for server in servers]
    new = lab.add("s1", "red", "net", "red31", "10.0.0.31")
    try:
        deadline = time.monotonic() + 5  # the controller plugs a new port within moments
        while not lab.pings("red31", "10.0.0.13"):
            assert time.monotonic() < deadline, "red31 never reached red13"
        after = [lab.net.controller_metrics(server) for server in servers]
    finally:
        with_directory(lab.net, lambda c: remove_node(lab.net, c, new))
    for old, now in zip(before, after, strict=True):
        assert now["packet_in"] > old["packet_in"], (old, now)
        assert now["decisions"]["allowed"] == old["decisions"]["allowed"] + 1, (old, now)
        assert now["connected"] and now["pairs"] >= 1, now
    assert after[0]["nodes"] == before[0]["nodes"] + 1, "red31 is a node of s1"
    status = {s["server"]: s for s in lab.net.status()["servers"]}
    assert all(s["controller"] is not None for s in status.values())
    members = {m["member"]: m["kind"] for m in lab.net.status()["network"]}
    assert re.fullmatch(r"the agents' Docker engine pid \d+", members["docker"]), members


SERVE = """
import socket, sys
name = sys.argv[1]
tcp = socket.create_server(("0.0.0.0", 7000))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 7001))
import threading
def answer_udp():
    while True:
        data, peer = udp.recvfrom(100); udp.sendto(name.encode(), peer)
threading.Thread(target=answer_udp, daemon=True).start()
while True:
    conn, _ = tcp.accept(); conn.sendall(name.encode()); conn.close()
"""
ASK = """
import socket, sys
kind, ip = sys.argv[1], sys.argv[2]
if kind == "tcp":
    print(socket.create_connection((ip, 7000), timeout=3).recv(100).decode())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(b"who", (ip, 7001)); print(s.recvfrom(100)[0].decode())
"""


def test_same_address_reaches_own_tenant_over_tcp_and_udp(lab: Lab) -> None:
    """Every ordered pair of every tenant, TCP and UDP: the answer comes from the node of the
    client's own tenant, never from the other tenant's node with the same address."""
    names = [f"{tenant}{ip[-2:]}" for tenant in TENANTS for ip in PLACEMENT.values()]
    servers = [
        subprocess.Popen(
            ["ip", "netns", "exec", lab.nodes[name].netns, "python3", "-c", SERVE, name]
        )
        for name in names
    ]
    try:
        time.sleep(0.5)
        wrong = []
        for client in names:
            tenant = client.rstrip("0123456789")
            for ip in PLACEMENT.values():
                if ip.endswith(client[-2:]):
                    continue
                for kind in ("tcp", "udp"):
                    answer = lab.run(client, ["python3", "-c", ASK, kind, ip]).stdout.strip()
                    if answer != f"{tenant}{ip[-2:]}":
                        wrong.append((client, ip, kind, answer))
        assert wrong == []
    finally:
        for process in servers:
            process.kill()
            process.wait()


def test_isolation_matrix(lab: Lab) -> None:
    """Cross-tenant and policy-denied pairs get nothing, in both directions."""
    reached = []
    for name in ("red11", "red12", "red13"):
        if lab.pings(name, "10.0.0.14"):  # blue14's address: red has no such node
            reached.append((name, "10.0.0.14"))
        if lab.pings(name, "10.0.1.5"):  # red's own dmz: no link yet
            reached.append((name, "10.0.1.5"))
    if lab.pings("blue14", "10.0.1.5"):
        reached.append(("blue14", "10.0.1.5"))
    if lab.pings("reddmz", "10.0.0.11"):
        reached.append(("reddmz", "10.0.0.11"))
    assert reached == []
    assert lab.pings("blue11", "10.0.0.14"), "blue's own node must still be reachable"


def test_link_allows_and_its_removal_takes_effect_within_a_second(lab: Lab) -> None:
    link = with_directory(lab.net, lambda c: c.create_link("red", "network", "net", "dmz"))
    deadline = time.monotonic() + 5
    while not lab.pings("red11", "10.0.1.5") and time.monotonic() < deadline:
        pass
    assert lab.pings("red11", "10.0.1.5") and lab.pings("reddmz", "10.0.0.13")
    with_directory(lab.net, lambda c: c.delete_link("red", link.id))
    time.sleep(1.0)
    assert not lab.pings("red11", "10.0.1.5")
    assert not lab.pings("reddmz", "10.0.0.13")


def test_full_mtu_end_to_end(lab: Lab) -> None:
    assert lab.pings("red11", "10.0.0.13", "-M", "do", "-s", "1472")
    assert not lab.pings("red11", "10.0.0.13", "-M", "do", "-s", "1473")  # the tenant MTU is 1500


def capture(netns: str, interface: str, path: Path) -> subprocess.Popen:
    """tcpdump in a namespace, writing to `path`; returns once it is listening."""
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "tcpdump",
            "-i",
            interface,
            "-Z",
            "root",
            "-nn",
            "--immediate-mode",
            "-U",
            "-w",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    said = ""
    while "listening on" not in said:
        line = process.stderr.readline()
        assert line, f"tcpdump did not start: {said}"
        said += line
    return process


def stop_capture(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    process.wait(5)


def read_capture(path: Path) -> list[str]:
    return subprocess.run(
        ["tcpdump", "-nn", "-e", "-r", str(path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_underlay_carries_only_plain_ip_between_locators(lab: Lab, tmp_path: Path) -> None:
    captures = {
        cloud: capture(lab.net.netns(cloud), "any", tmp_path / f"{cloud}.pcap")
        for cloud in ("east", "west")
    }
    try:
        for tenant in TENANTS:
            assert lab.pings(f"{tenant}11", "10.0.0.13", "-s", "1400")
            assert lab.pings(f"{tenant}13", "10.0.0.12")
        lab.run(
            "red11",
            [
                "python3",
                "-c",
                "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'x'*1000, ('10.0.0.13', 9)) for _ in range(20)]",
            ],
        )
        time.sleep(0.5)
    finally:
        for process in captures.values():
            stop_capture(process)
    locators = {n.locator for n in lab.nodes.values()}
    infrastructure = (
        {s.address for s in lab.net.lab.servers}
        | {lab.net.lab.directory.address}
        | {a for r in lab.net.lab.routers for a in r.addresses.values()}
    )
    lines = [line for cloud in captures for line in read_capture(tmp_path / f"{cloud}.pcap")]
    assert [line for line in lines if "802.1Q" in line or "vlan" in line.lower()] == []
    ip_lines = [line for line in lines if "ethertype IPv4" in line]
    endpoints = [IPV4.search(line) for line in ip_lines]
    assert all(endpoints), [line for line, e in zip(ip_lines, endpoints, strict=True) if not e]
    between_locators = [
        line for line, e in zip(ip_lines, endpoints, strict=True) if {e[1], e[2]} <= locators
    ]
    assert len(between_locators) >= 16, "the tenant traffic was not captured"
    assert [line for line in between_locators if " ICMP " not in line and " UDP," not in line] == []
    assert [
        line for line in between_locators if ".4789:" in line or ".6081:" in line or "GRE" in line
    ] == []
    # Everything else on the underlay is the servers' own traffic (directory lookups).
    others = [
        line for line, e in zip(ip_lines, endpoints, strict=True) if not {e[1], e[2]} <= locators
    ]
    assert [
        line
        for line, e in zip(ip_lines, endpoints, strict=True)
        if not {e[1], e[2]} <= locators | infrastructure
    ] == []
    assert all(lab.net.lab.directory.address in line for line in others)


IPV4 = re.compile(r"length \d+: (\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)(?:\.\d+)?:")


def test_spoofed_source_mac_ip_and_arp_reach_nobody(lab: Lab, tmp_path: Path) -> None:
    victim = lab.nodes["red12"]
    before = anti_spoof_drops(lab, lab.nodes["red11"])
    sniff = capture(victim.netns, "eth0", tmp_path / "victim.pcap")
    try:
        # A forged IP source.
        lab.run("red11", ["ip", "addr", "add", "10.0.0.99/24", "dev", "eth0"])
        assert not lab.pings("red11", "10.0.0.12", "-I", "10.0.0.99")
        lab.run("red11", ["ip", "addr", "del", "10.0.0.99/24", "dev", "eth0"])
        # A forged MAC source.
        real_mac = lab.nodes["red11"].mac
        lab.run("red11", ["ip", "link", "set", "eth0", "address", "52:54:00:de:ad:01"])
        assert not lab.pings("red11", "10.0.0.12")
        lab.run("red11", ["ip", "link", "set", "eth0", "address", real_mac])
        # Forged ARP: claim red12's address, broadcast and unicast.
        forge = (
            "import socket, struct\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0))\n"
            "mac = bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':', ''))\n"
            "for op, dst in ((2, b'\\xff'*6), (1, b'\\xff'*6)):\n"
            "    arp = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, op, mac, socket.inet_aton('10.0.0.12'), dst, socket.inet_aton('10.0.0.12'))\n"
            "    [s.send(dst + mac + b'\\x08\\x06' + arp) for _ in range(3)]\n"
        )
        assert lab.run("red11", ["python3", "-c", forge]).returncode == 0
        time.sleep(0.5)
    finally:
        stop_capture(sniff)
    seen = read_capture(tmp_path / "victim.pcap")
    assert [
        line
        for line in seen
        if "10.0.0.99" in line or "de:ad" in line or ("ARP" in line and "10.0.0.12 is-at" in line)
    ] == []
    # Dropped at the attacker's own port, by the anti-spoofing flow, never sent to a controller.
    assert anti_spoof_drops(lab, lab.nodes["red11"]) - before >= 8
    # And the real node still works afterwards.
    assert lab.pings("red11", "10.0.0.12")


def anti_spoof_drops(lab: Lab, node: NetnsNode) -> int:
    """Packets the node's catch-all drop flow (priority 100) has dropped."""
    flows = lab.ofctl(node.server, "dump-flows", f"table=0,in_port={node.port}")
    counts = [
        re.search(r"n_packets=(\d+)", line)
        for line in flows.splitlines()
        if "priority=100," in line
    ]
    assert len(counts) == 1, flows
    return int(counts[0][1])


def test_controller_killed_during_transfer_loses_nothing(lab: Lab) -> None:
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.nodes["red13"].netns, "iperf3", "-s", "-1", "-p", "5210"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    client = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.nodes["red11"].netns,
            "iperf3",
            "-c",
            "10.0.0.13",
            "-p",
            "5210",
            "-t",
            "5",
            "-J",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    s1 = lab.net.lab.server("s1")
    controller = lab.net.controller_daemon(s1)
    pair = f.cookie(f.PAIR, lab.nodes["red11"].locator, lab.nodes["red13"].locator)
    time.sleep(1.5)
    before, dumped = pair_flows(lab, "s1", pair), time.monotonic()
    assert len(before) == 2, before  # egress (table 1) and return (table 2)
    os.kill(running_pid(controller), signal.SIGKILL)
    time.sleep(0.5)
    lab.net.up()
    restarted = time.monotonic()
    new = lab.add("s2", "red", "net", "red15", "10.0.0.15")
    assert new.server == "s2"
    while not lab.pings("red11", "10.0.0.15"):
        assert time.monotonic() - restarted < 2.0 + 1.0, "new conversation did not work within 2 s"
    out, _ = client.communicate(timeout=20)
    server.wait(10)
    report = json.loads(out)
    assert "error" not in report, report.get("error")
    intervals = [i["sum"]["bytes"] for i in report["intervals"]]
    assert len(intervals) >= 5 and min(intervals) > 0, intervals
    # The restarted controller neither flushed nor re-added the pair's flows: the very same
    # entries are there, their age counted on from before the restart, their packets too.
    after, elapsed = pair_flows(lab, "s1", pair), time.monotonic() - dumped
    assert after.keys() == before.keys(), (before, after)
    for key, (age, packets) in before.items():
        assert after[key][0] >= age + elapsed - 0.5, ("flow re-added", key, before, after)
        assert after[key][1] > packets, key
    stats = controller_stats(lab, "s1", lambda s: s.get("connects", 0) >= 1)
    assert stats["connects"] == 1 and stats["pairs"] >= 1, stats
    egress = lambda: lab.ofctl("s1", "dump-flows", "table=1,ip,nw_dst=10.0.0.15")  # noqa: E731
    assert "nw_dst=10.0.0.15" in egress()
    with_directory(lab.net, lambda c: remove_node(lab.net, c, new))
    time.sleep(1.0)
    assert "nw_dst=10.0.0.15" not in egress(), "a deleted node's conversation outlived the change"


def pair_flows(lab: Lab, server: str, cookie: int) -> dict[str, tuple[float, int]]:
    """The server's flows with exactly this cookie: (table, priority, match, actions) -> (age
    in seconds, packets)."""
    found = {}
    for line in lab.ofctl(server, "dump-flows", f"cookie={cookie:#x}/-1").splitlines():
        if "cookie=" not in line:
            continue
        table = re.search(r"table=(\d+)", line)
        age, packets = re.search(r"duration=([\d.]+)s", line), re.search(r"n_packets=(\d+)", line)
        assert age and packets, line
        key = f"table={table[1] if table else 0} " + line[line.index("priority=") :]
        found[key] = (float(age[1]), int(packets[1]))
    return found


def controller_stats(lab: Lab, server: str, ready: Callable[[dict], bool] = lambda _: True) -> dict:
    """The controller's counters once `ready` holds of them (they are refreshed once a
    second, so a fresh event can take that long to show)."""
    of = lab.net.lab.server(server)
    deadline = time.monotonic() + 5
    while not ready(stats := lab.net.controller_stats(of) or {}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return stats


def controller_packet_ins(lab: Lab, server: str) -> int:
    time.sleep(1.2)  # the counters of everything sent so far are on disk after one refresh
    return controller_stats(lab, server)["packet_in"]


DHCP_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    ip route replace default via "$router"
    echo "dns=$dns domain=$domain" >"$0.lease"
    ;;
esac
"""


def test_a_node_learns_its_address_by_dhcp_from_its_own_server(lab: Lab, tmp_path: Path) -> None:
    node = lab.add("s2", "red", "net", "reddhcp", "10.0.0.20", dhcp=True)
    script = tmp_path / "udhcpc.sh"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    client = lab.run(
        node.name,
        [
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            str(script),
        ],
    )
    assert client.returncode == 0, client.stdout + client.stderr
    assert "inet 10.0.0.20/24" in lab.run(node.name, ["ip", "-4", "addr", "show", "eth0"]).stdout
    assert "default via 10.0.0.1" in lab.run(node.name, ["ip", "route"]).stdout
    # the lease names the node's own server's resolver and its tenant's search domain
    assert Path(f"{script}.lease").read_text().split() == [
        "dns=10.0.0.1",
        "domain=red.nvi.internal",
    ]
    assert lab.pings(node.name, "10.0.0.11") and lab.pings("red13", "10.0.0.20")
    with_directory(lab.net, lambda c: remove_node(lab.net, c, node))


@contextlib.contextmanager
def resolv_conf(lab: Lab, *names: str) -> Iterator[None]:
    """What a container gets (hostagent.containers): its server's resolver and its tenant's
    search domain, as `ip netns exec` shows a namespace node (/etc/netns/NS/resolv.conf)."""
    made = []
    try:
        for name in names:
            node = lab.nodes[name]
            directory = Path("/etc/netns") / node.netns
            directory.mkdir(parents=True)
            made.append(directory)
            (directory / "resolv.conf").write_text(
                f"nameserver 10.0.0.1\nsearch {search_domain(node.tenant)}\n"
            )
        yield
    finally:
        for directory in made:
            (directory / "resolv.conf").unlink()
            directory.rmdir()


def lookup(lab: Lab, node: str, name: str) -> list[str]:
    """The addresses the node's own server answers for `name` (busybox nslookup, type A)."""
    answer = lab.run(node, ["busybox", "nslookup", "-type=a", name, "10.0.0.1"], timeout=10)
    _, _, names = answer.stdout.partition("Name:")
    return re.findall(r"Address:\s*([0-9.]+)\s*$", names, re.MULTILINE)


def test_names_resolve_for_the_tenants_own_nodes_only(lab: Lab) -> None:
    assert lookup(lab, "red11", "red13") == ["10.0.0.13"]
    assert lookup(lab, "red11", "reddmz.dmz") == ["10.0.1.5"]
    assert lookup(lab, "red11", "red13.net.red.nvi.internal") == ["10.0.0.13"]
    assert lookup(lab, "blue11", "red13") == []  # another tenant's name never resolves
    assert lookup(lab, "blue11", "reddmz.dmz.red.nvi.internal") == []
    assert lookup(lab, "blue11", "blue13") == ["10.0.0.13"]
    assert lookup(lab, "red11", "red13.dmz") == []  # red13 is in net, not dmz
    refused = lab.run("blue11", ["busybox", "nslookup", "-type=a", "red13", "10.0.0.1"])
    assert "NXDOMAIN" in refused.stdout + refused.stderr
    with resolv_conf(lab, "red11", "blue11"):
        assert lab.run("red11", ["getent", "hosts", "red13"]).stdout.split()[:1] == ["10.0.0.13"]
        assert lab.run("red11", ["ping", "-c", "1", "-W", "2", "red13"]).returncode == 0
        assert lab.run("blue11", ["getent", "hosts", "red13"]).returncode != 0
    assert controller_stats(lab, "s1", lambda s: s.get("dns_nxdomain", 0) >= 4)["dns_nxdomain"] >= 4


def test_a_name_follows_its_node_deleted_and_recreated_elsewhere(lab: Lab) -> None:
    node = lab.add("s2", "red", "net", "redmoving", "10.0.0.40")
    assert lookup(lab, "red11", "redmoving") == ["10.0.0.40"]
    with_directory(lab.net, lambda c: remove_node(lab.net, c, node))
    deadline = time.monotonic() + 2
    while lookup(lab, "red11", "redmoving") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lookup(lab, "red11", "redmoving") == []
    node = lab.add("s3", "red", "net", "redmoving", "10.0.0.41")
    added = time.monotonic()
    while lookup(lab, "red11", "redmoving") != ["10.0.0.41"] and time.monotonic() < added + 2:
        time.sleep(0.1)
    assert lookup(lab, "red11", "redmoving") == ["10.0.0.41"]
    assert lab.pings("red11", "10.0.0.41")
    with_directory(lab.net, lambda c: remove_node(lab.net, c, node))


def test_after_the_first_packet_no_controller_work(lab: Lab) -> None:
    assert lab.pings("blue12", "10.0.0.13")
    before = {s: controller_packet_ins(lab, s) for s in ("s2", "s3")}
    flood = lab.run("blue12", ["ping", "-c", "200", "-i", "0.005", "-q", "10.0.0.13"])
    assert " 0% packet loss" in flood.stdout, flood.stdout
    assert {s: controller_packet_ins(lab, s) for s in ("s2", "s3")} == before
