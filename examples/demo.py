"""The NVI demo, end to end, on a running machine (`scripts/demo` installs what it needs first).

    sudo .venv/bin/python examples/demo.py [--down] [LAB_FILE]

Three independent servers in two clouds (the lab file), a directory, and a controller and an
agent per server. Two tenants both use 10.0.0.0/24; each gets a container on every server
with the same addresses, and red also gets a VM. The demo then shows, one step at a time:
the flows the first packet of a conversation installs on both servers, an HTTP request
crossing clouds, the other tenant's node with the same address staying out of reach, what
the underlay carried (plain IPv4 between locators, full-size packets), and a fourth server
joining the running lab with no change to the other three. Every step checks what it shows
and the demo stops at the first step that fails, naming it. Running it again reuses what
exists; `nvi lab down LAB_FILE` (or `--down`) removes everything.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nvi.core.errors import NviError  # noqa: E402
from nvi.lab import links  # noqa: E402
from nvi.lab.agents import docker_url, lab_docker_root  # noqa: E402
from nvi.lab.net import LabNet  # noqa: E402
from nvi.lab.outside import fetch_in  # noqa: E402
from nvi.lab.populate import populate, token_path  # noqa: E402
from nvi.lab.process import running_pid  # noqa: E402
from nvi.lab.spec import Lab, Tenant, TenantNetwork, load_lab  # noqa: E402

TENANTS = ("red", "blue")
NETWORK = "net"
CIDR = "10.0.0.0/24"
VM = ("red", "vm", "10.0.0.30")  # tenant, name, address: on the lab's last server
BLUE_ONLY = "10.0.0.99"  # an address only blue has
# A page fetched in a container, given up after 3 s (busybox's own `wget -T` crashes, with
# Debian 12's busybox, whether the fetch succeeds or not: never a sign of either).
FETCH = ("timeout", "3", "wget", "-q", "-O", "-")
CONTAINER = ("--cpus", "0.25", "--memory", "64")  # small: a lab server's capacity is the machine's
PAIR_FLOWS = "cookie=0x0200000000000000/0xff00000000000000"  # openflow.flows.PAIR class
ENCAPSULATIONS = {4: "IP-in-IP", 47: "GRE", 41: "IPv6-in-IPv4"}
TUNNEL_PORTS = {4789: "VXLAN", 6081: "Geneve", 4790: "VXLAN-GPE"}
console = Console()


class StepFailed(Exception):
    pass


@dataclass
class Demo:
    lab_file: Path
    net: LabNet
    report: list[tuple[str, str, float]] = field(default_factory=list)
    nodes: dict[str, dict] = field(default_factory=dict)  # "tenant/name" -> agent's record

    @contextmanager
    def step(self, title: str) -> Iterator[list[str]]:
        """One step of the report; the list collects its one-line result."""
        console.rule(f"[bold]{len(self.report) + 1}. {title}")
        started = time.monotonic()
        result: list[str] = []
        try:
            yield result
        except (StepFailed, NviError, subprocess.SubprocessError, OSError) as error:
            self.report.append((title, f"[red]FAILED[/]: {error}", time.monotonic() - started))
            self.print_report()
            raise StepFailed(f"step {len(self.report)} ({title}) failed: {error}") from None
        self.report.append((title, "; ".join(result), time.monotonic() - started))

    def print_report(self) -> None:
        table = Table(title="NVI demo", title_justify="left")
        for column in ("#", "step", "result", "seconds"):
            table.add_column(column)
        for number, (title, result, seconds) in enumerate(self.report, 1):
            table.add_row(str(number), title, result, f"{seconds:.1f}")
        console.print(table)

    # -- the tenants' side: the CLI, as a tenant types it ------------------------------

    def nvi_node(self, server: str, tenant: str, *args: str, quiet: bool = False) -> str:
        argv = [str(REPO / ".venv/bin/nvi"), "node", *args]
        argv += ["--agent", str(self.net.rundir / server / "agent.sock")]
        if args[0] in ("create", "delete"):  # what acts on the tenant's behalf needs its token
            argv += ["--token-file", str(token_path(self.net, tenant))]
        shown = " ".join(["nvi", "node", *args, "--agent", f"<{server}>"])
        if not quiet:
            console.print(f"[dim]$ {shown}[/]")
        errors = subprocess.PIPE if quiet else None
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=errors, text=True, timeout=600)
        if done.returncode != 0:
            raise StepFailed(f"`{shown}` exited with {done.returncode}")
        return done.stdout

    def ensure_node(self, server: str, tenant: str, name: str, ip: str, *extra: str) -> None:
        key = f"{tenant}/{name}"
        try:
            shown = self.nvi_node(server, tenant, "show", key, "-o", "json", quiet=True)
        except StepFailed:
            create = ["create", key, "-n", NETWORK, "--ip", ip, *(extra or CONTAINER), "-o", "json"]
            shown = self.nvi_node(server, tenant, *create)
        self.nodes[key] = {**json.loads(shown)[0], "server": server}

    def in_container(
        self, key: str, *argv: str, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """Run a command inside a tenant's container (through the lab's Docker engine)."""
        engine = docker_url(lab_docker_root(self.net.lab.name) / "exec")
        container = f"nvi-{self.nodes[key]['id']}"
        return subprocess.run(
            ["docker", "-H", engine, "exec", container, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def as_tenant(self, tenant: str) -> Callable[..., str]:
        """`nvi ...` as the tenant types it on this machine, with only its profile (the
        directory's URL, the lab's CA, its token); the output, or StepFailed."""
        self.net.write_client_config()  # now with the tenants' profiles
        config, profile = str(self.net.client_config), f"{self.net.lab.name}-{tenant}"
        env = {**os.environ, "NVI_CONFIG": config, "NVI_PROFILE": profile}
        console.print(f"[dim]$ export NVI_CONFIG={config} NVI_PROFILE={profile}[/]")

        def nvi(*args: str) -> str:
            console.print(f"[dim]$ nvi {' '.join(args)}[/]")
            argv = [str(REPO / ".venv/bin/nvi"), *args]
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise StepFailed(f"`nvi {' '.join(args)}`: {done.stderr.strip()}")
            return done.stdout

        return nvi

    def from_outside(self, url: str, timeout: float = 3) -> str | None:
        """The page at `url` as the lab's outside host fetches it, or None if none came."""
        assert self.net.lab.outside is not None
        return fetch_in(self.net.netns(self.net.lab.outside.name), url, timeout)

    def reaches(self, key: str, ip: str, within: int = 5) -> bool:
        """Whether a reply comes back within `within` seconds (one ping a second until one
        does: a slow first packet on a busy machine is not a failure)."""
        ping = self.in_container(key, "ping", "-c", "1", "-w", str(within), ip)
        return ping.returncode == 0

    def conversation_flows(self, server: str) -> set[str]:
        dumped = self.net.ovs(self.net.lab.server(server)).ofctl("dump-flows", PAIR_FLOWS)
        return {_without_counters(line) for line in dumped.splitlines()[1:] if line.strip()}


def _without_counters(flow: str) -> str:
    return re.sub(r"\s*(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*,", "", flow).strip()


# -- the steps -----------------------------------------------------------------------------


def bring_up(demo: Demo, result: list[str]) -> None:
    changes = demo.net.up()
    subprocess.run([str(REPO / ".venv/bin/nvi"), "lab", "status", str(demo.lab_file)], check=True)
    servers = ", ".join(s.name for s in demo.net.lab.servers)
    clouds = ", ".join(c.name for c in demo.net.lab.clouds)
    result.append(f"servers {servers} in clouds {clouds}; {len(changes)} changes made")


def tenants_and_nodes(demo: Demo, result: list[str]) -> None:
    created = populate(demo.net)  # tenants, their networks and tokens (the operator's part)
    for change in created:
        console.print(f"  {change}")
    servers = [server.name for server in demo.net.lab.servers]
    for index, server in enumerate(servers):
        for tenant in TENANTS:
            demo.ensure_node(server, tenant, f"{tenant}-{server}", f"10.0.0.{11 + index}")
    demo.ensure_node(servers[-1], "blue", "blue-only", BLUE_ONLY)
    tenant, name, ip = VM
    demo.ensure_node(servers[-1], tenant, name, ip, "--kind", "vm", "--memory", "192")
    table = Table(title="nodes (the same 10.0.0.0/24 in both tenants)", title_justify="left")
    for column in ("tenant", "name", "kind", "server", "ip", "locator", "ready"):
        table.add_column(column)
    for node in demo.nodes.values():
        row = [str(node[c]) for c in ("tenant", "name", "kind", "server", "ip", "locator")]
        table.add_row(*row, "yes" if node["ready"] else "no")
    console.print(table)
    if not all(node["ready"] for node in demo.nodes.values()):
        raise StepFailed("not every node is ready")
    result.append(f"{len(demo.nodes)} nodes, {len(servers)} servers, one VM")


def first_connection(demo: Demo, result: list[str]) -> None:
    servers = [server.name for server in demo.net.lab.servers]
    source, target = f"red-{servers[0]}", f"red-{servers[-1]}"
    here, there = servers[0], servers[-1]
    before = {server: demo.conversation_flows(server) for server in (here, there)}
    ip = demo.nodes[f"red/{target}"]["ip"]
    console.print(f"{source} ({here}, cloud east) opens a connection to {target} at {ip} ({there})")
    started = time.monotonic()
    if not demo.reaches(f"red/{source}", ip):
        raise StepFailed(f"{source} did not reach {target}")
    took = time.monotonic() - started
    new_total = 0
    for server in (here, there):
        new = demo.conversation_flows(server) - before[server]
        new_total += len(new)
        shown = sorted(new) or sorted(before[server])
        label = "installed now" if new else "already there from an earlier run"
        console.print(f"[bold]{server}[/]: conversation flows {label}:")
        for flow in shown:
            console.print(f"  {flow}", markup=False, soft_wrap=True)
        if not shown:
            raise StepFailed(f"no conversation flow on {server}")
    result.append(f"first reply after {took * 1000:.0f} ms; {new_total} flows installed")


def http_across_clouds(demo: Demo, result: list[str], capture: Path) -> None:
    servers = [server.name for server in demo.net.lab.servers]
    target_ip = demo.nodes[f"red/red-{servers[-1]}"]["ip"]
    for tenant in TENANTS:
        page = f"hello from {tenant}-{servers[-1]} (tenant {tenant}, server {servers[-1]})"
        server_key = f"{tenant}/{tenant}-{servers[-1]}"
        script = (
            f"mkdir -p /www && echo '{page}' > /www/index.html && "
            "dd if=/dev/zero of=/www/big bs=1024 count=512 2>/dev/null && "
            "(pgrep httpd >/dev/null || httpd -p 80 -h /www)"
        )
        if demo.in_container(server_key, "sh", "-c", script).returncode != 0:
            raise StepFailed(f"could not start the web server in {server_key}")
    router = demo.net.lab.routers[0]
    west = demo.net.lab.servers[-1].cloud
    with _capture(demo.net.netns(router.name), west, capture):
        for tenant in TENANTS:
            client = f"{tenant}/{tenant}-{servers[0]}"
            got = demo.in_container(client, "wget", "-q", "-O", "-", f"http://{target_ip}/")
            body = got.stdout.strip()
            console.print(f"{client} GET http://{target_ip}/ -> [bold]{body or got.stderr}[/]")
            if f"tenant {tenant}," not in body:
                raise StepFailed(f"{client} got {body!r} instead of its own tenant's page")
            name = f"{tenant}-{servers[-1]}"  # by name: answered by the client's own server
            got = demo.in_container(client, "wget", "-q", "-O", "-", f"http://{name}/")
            console.print(
                f"{client} GET http://{name}/ -> [bold]{got.stdout.strip() or got.stderr}[/]"
            )
            if got.stdout.strip() != body:
                raise StepFailed(f"{client} got {got.stdout!r} by name, not its node's page")
        big = demo.in_container(
            f"red/red-{servers[0]}", "wget", "-q", "-O", "/dev/null", f"http://{target_ip}/big"
        )
        if big.returncode != 0:
            raise StepFailed("the 512 KiB download failed")
    result.append(
        f"each tenant's GET of {target_ip} (and of its node by name) answered by its own "
        "node; 512 KiB fetched"
    )


def isolation(demo: Demo, result: list[str]) -> None:
    servers = [server.name for server in demo.net.lab.servers]
    red = f"red/red-{servers[0]}"
    if demo.reaches(red, BLUE_ONLY, within=3):
        raise StepFailed(f"{red} reached blue's {BLUE_ONLY}")
    fetch = demo.in_container(red, *FETCH, f"http://{BLUE_ONLY}/")
    if fetch.returncode == 0:
        raise StepFailed(f"{red} fetched a page from blue's {BLUE_ONLY}")
    vm_ip = VM[2]
    blue = f"blue/blue-{servers[0]}"
    if demo.reaches(blue, vm_ip, within=3):
        raise StepFailed(f"{blue} reached red's VM at {vm_ip}")
    if not demo.reaches(red, vm_ip):
        raise StepFailed(f"{red} did not reach its tenant's VM at {vm_ip}")
    console.print(f"{red} -> {BLUE_ONLY} (blue's only): [green]unreachable[/] (ping and HTTP)")
    console.print(f"{blue} -> {vm_ip} (red's VM): [green]unreachable[/]")
    console.print(f"{red} -> {vm_ip} (its tenant's VM, other cloud): [green]reached[/]")
    result.append("blue's addresses unreachable from red and red's VM from blue; red's VM reached")


def underlay_summary(demo: Demo, result: list[str], capture: Path) -> None:
    lab = demo.net.lab
    pools = [ipaddress.ip_network(server.locators) for server in lab.servers]
    control = {server.address for server in lab.servers} | {lab.directory.address}
    tenant = ipaddress.ip_network(CIDR)
    seen: Counter[tuple[str, str, str, str]] = Counter()
    largest = 0
    problems = []
    for line in _read_capture(capture):
        parsed = _frame(line)
        if parsed is None:
            problems.append(f"not plain IPv4: {line[:100]}")
            continue
        source, destination, protocol, length = parsed
        ends = [ipaddress.ip_address(source), ipaddress.ip_address(destination)]
        if any(ip in tenant for ip in ends):
            problems.append(f"a tenant address crossed the underlay: {line[:100]}")
        if all(any(ip in pool for pool in pools) for ip in ends):
            kind = "tenant data (locator to locator)"
            largest = max(largest, length)
        elif {source, destination} & control:
            kind = "control (a server and the directory)"
        else:
            kind = "unexpected"
            problems.append(f"neither locators nor control: {source} > {destination}")
        seen[(kind, source, destination, protocol)] += 1
    table = Table(title=f"what crossed router {lab.routers[0].name} (ARP aside)")
    for column in ("kind", "source", "destination", "protocol", "packets"):
        table.add_column(column)
    for (kind, source, destination, protocol), packets in sorted(seen.items()):
        table.add_row(kind, source, destination, protocol, str(packets))
    console.print(table)
    data = sum(n for key, n in seen.items() if key[0].startswith("tenant data"))
    if not data:
        problems.append("no tenant data was captured")
    elif largest < 1500:
        problems.append(f"largest tenant IP packet {largest} bytes: not full size")
    if problems:
        raise StepFailed("; ".join(sorted(set(problems))[:3]))
    result.append(
        f"{data} tenant packets, all plain IPv4 between locators, no tunnel header, "
        f"largest {largest} bytes (the full 1500 MTU)"
    )


def new_server(lab: Lab) -> str:
    """The fourth server, exactly as an operator appends it to the lab file: its own facts
    only (in the last server's cloud: with the example lab, 203.0.113.14)."""
    cloud = lab.cloud(lab.servers[-1].cloud)
    subnet = ipaddress.ip_network(cloud.subnet)
    return (
        f'\n[[servers]]\nname = "s4"\ncloud = "{cloud.name}"\naddress = "{subnet[14]}"\n'
        f'locators = "{subnet[96]}/27"\n'
    )


def fourth_server(demo: Demo, result: list[str]) -> Path:
    bigger_file = demo.net.rundir / f"{demo.lab_file.stem}+s4.toml"
    appended = new_server(demo.net.lab)
    bigger_file.write_text(demo.lab_file.read_text() + appended)
    bigger = LabNet(with_tenants(load_lab(bigger_file)), demo.net.root)
    console.print(f"the operator appends to the lab file ({bigger_file}):")
    console.print(appended, markup=False)
    before = _fingerprint(demo.net)
    changes = bigger.up()
    foreign = [change for change in changes if "s4" not in change]
    for change in changes:
        console.print(f"  {change}")
    if foreign or _fingerprint(demo.net) != before:
        raise StepFailed(f"adding s4 changed the others: {foreign or 'a process or config'}")
    demo.net = bigger
    demo.ensure_node("s4", "red", "red-s4", "10.0.0.14")
    for key in [k for k in demo.nodes if k.startswith("red/red-") and k != "red/red-s4"]:
        if not demo.reaches(key, "10.0.0.14"):
            raise StepFailed(f"{key} did not reach red-s4")
        console.print(f"{key} ({demo.nodes[key]['server']}) -> red-s4 10.0.0.14: [green]reached[/]")
    result.append(f"s4 joined with {len(changes)} changes, all its own; every red node reaches it")
    return bigger_file


def self_service(demo: Demo, result: list[str]) -> None:
    """A tenant with only its profile (the directory's URL, the lab's CA, its token), from
    this machine: the catalogue, automatic placement, its nodes on every server, the portal."""
    net = demo.net
    nvi = demo.as_tenant("red")
    catalogue = json.loads(nvi("server", "list", "-o", "json"))
    console.print(nvi("server", "list"), markup=False)
    dead = [entry["server"] for entry in catalogue if not entry["alive"]]
    if dead or len(catalogue) < len(net.lab.servers):
        raise StepFailed(f"the catalogue lacks live servers: {dead or catalogue}")
    placed = json.loads(
        nvi("node", "create", "red/red-auto", "-n", NETWORK, *CONTAINER, "-o", "json")
    )
    console.print(f"automatic placement put red-auto on [bold]{placed[0]['server']}[/]")
    listed = json.loads(nvi("node", "list", "-o", "json"))
    console.print(nvi("node", "list"), markup=False)
    tenants = {row["tenant"] for row in listed}
    if tenants != {"red"} or not any(row["name"] == "red-auto" for row in listed):
        raise StepFailed(f"red's node list shows tenants {tenants} or lacks red-auto")
    servers = {row["server"] for row in listed}
    nvi("node", "delete", "red/red-auto")
    portal = net.lab.portal
    if portal is None:
        raise StepFailed("the lab file has no [portal]")
    picture = net.root / f"{net.lab.name}-portal-red.png"  # kept after the lab goes down
    token = str(token_path(net, "red"))
    nvi("portal", "screenshot", portal.url, "--token-file", token, "--out", str(picture))
    if not picture.read_bytes().startswith(b"\x89PNG"):
        raise StepFailed(f"{picture} is not a PNG")
    console.print(f"the tenants' portal: [bold]{portal.url}[/] (sign in with a tenant token)")
    console.print(f"red's page, as a real browser shows it: {picture}")
    result.append(
        f"red placed a node by itself, listed {len(listed)} nodes on {len(servers)} servers; "
        f"portal {portal.url}, screenshot {picture}"
    )


def ways_in_and_out(demo: Demo, result: list[str]) -> None:
    """Seen from the outside host: red's outbound access (its server's address), a port
    red publishes on its server, and a floating address attached to and detached from a red
    node; blue, with the same addresses, is reached through none of them."""
    lab = demo.net.lab
    if lab.outside is None:
        raise StepFailed("the lab file has no [outside] host")
    first, last = lab.servers[0], lab.servers[-1]
    nvi = demo.as_tenant("red")
    nvi("directory", "network", "update", "red", NETWORK, "--outbound", "on")
    page = lab.outside.url
    seen = {}
    for tenant in TENANTS:
        key = f"{tenant}/{tenant}-{first.name}"
        got = demo.in_container(key, *FETCH, page)
        seen[tenant] = got.stdout.strip() if got.returncode == 0 else None
        console.print(f"{key} GET {page} -> [bold]{seen[tenant] or 'no answer'}[/]")
    if seen["red"] != f"you are {first.address}" or seen["blue"] is not None:
        raise StepFailed(f"outbound: red saw {seen['red']!r}, blue saw {seen['blue']!r}")

    published = f"http://{last.address}:8080/"
    nvi("node", "publish", f"red/red-{last.name}", "8080:80/tcp")
    body = demo.from_outside(published)
    console.print(f"outside GET {published} -> [bold]{body or 'no answer'}[/]")
    if f"hello from red-{last.name} (tenant red" not in (body or ""):
        raise StepFailed(f"the published port answered {body!r}, not red-{last.name}'s page")

    target = f"red/red-{first.name}"
    page_here = f"hello from red-{first.name} through its floating address"
    script = (
        f"mkdir -p /www && echo '{page_here}' > /www/index.html && "
        "(pgrep httpd >/dev/null || httpd -p 80 -h /www)"
    )
    if demo.in_container(target, "sh", "-c", script).returncode != 0:
        raise StepFailed(f"could not start the web server in {target}")
    shown = json.loads(nvi("node", "show", target, "-o", "json"))[0]
    if not shown.get("floating"):
        shown = json.loads(nvi("node", "floating", "attach", target, "-o", "json"))[0]
    floating = shown["floating"]
    body = demo.from_outside(f"http://{floating}/")
    console.print(f"outside GET http://{floating}/ -> [bold]{body or 'no answer'}[/]")
    out = demo.in_container(target, *FETCH, page).stdout.strip()
    console.print(f"{target} GET {page} -> [bold]{out}[/] (its floating address, not s1's)")
    if body != page_here or out != f"you are {floating}":
        raise StepFailed(f"floating {floating}: the outside got {body!r}, the node saw {out!r}")
    nvi("node", "floating", "detach", target)
    gone = demo.from_outside(f"http://{floating}/", timeout=1)
    console.print(f"detached; outside GET http://{floating}/ -> [bold]{gone or 'no answer'}[/]")
    if gone is not None:
        raise StepFailed(f"{floating} still answered after the detach")
    result.append(
        f"red went out as {first.address}, blue not at all; the outside reached "
        f"red-{last.name} at {last.address}:8080 and red-{first.name} at {floating} (and "
        "nothing after the detach)"
    )


def _fingerprint(net: LabNet) -> str:
    """The other members' processes (pid and start) and every file they were configured by."""
    parts = []
    for server in net.lab.servers:
        parts += [f"{d.name}:{running_pid(d)}" for d in net.daemons(server)]
        folder = net.rundir / server.name
        parts += [
            f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
            for path in sorted(folder.glob("*.toml"))
        ]
    return "\n".join(parts)


# -- capture -------------------------------------------------------------------------------


@contextmanager
def _capture(netns: str, interface: str, path: Path) -> Iterator[None]:
    argv = ["ip", "netns", "exec", netns, "tcpdump", "-i", interface, "-nn", "-U", "-Z", "root"]
    argv += ["--immediate-mode", "-w", str(path), "not arp"]
    tcpdump = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert tcpdump.stderr is not None
    tcpdump.stderr.readline()  # "listening on ...": capturing from here on
    try:
        yield
    finally:
        time.sleep(0.5)
        tcpdump.terminate()
        tcpdump.wait(10)


def _read_capture(path: Path) -> list[str]:
    argv = ["tcpdump", "-r", str(path), "-nn", "-v", "-e"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    frames, current = [], ""
    for line in done.stdout.splitlines():
        if line.startswith((" ", "\t")):
            current += " " + line.strip()
        else:
            if current:
                frames.append(current)
            current = line
    return [*frames, current] if current else frames


_IPV4 = re.compile(
    r"ethertype IPv4 .*?proto (?P<proto>\w+) \((?P<number>\d+)\), length (?P<length>\d+)\)"
    r" (?P<src>\d+\.\d+\.\d+\.\d+)(?:\.(?P<sport>\d+))? > (?P<dst>\d+\.\d+\.\d+\.\d+)"
    r"(?:\.(?P<dport>\d+))?"
)


def _frame(line: str) -> tuple[str, str, str, int] | None:
    """(source, destination, protocol, IP length) of a plain IPv4 frame; a tunnel's outer
    header counts as not plain."""
    found = _IPV4.search(line)
    if found is None:
        return None
    number = int(found["number"])
    ports = {int(p) for p in (found["sport"], found["dport"]) if p}
    if number in ENCAPSULATIONS or (found["proto"] == "UDP" and ports & set(TUNNEL_PORTS)):
        return None
    return found["src"], found["dst"], found["proto"], int(found["length"])


# -- main ----------------------------------------------------------------------------------


def with_tenants(lab: Lab) -> Lab:
    """The lab with the demo's two tenants, whatever the lab file declares."""
    declared = {tenant.name for tenant in lab.tenants}
    extra = [
        Tenant(name=name, networks=[TenantNetwork(name=NETWORK, cidr=CIDR)])
        for name in TENANTS
        if name not in declared
    ]
    return lab.model_copy(update={"tenants": [*lab.tenants, *extra]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lab_file", nargs="?", default="examples/labs/two-clouds.toml")
    parser.add_argument("--down", action="store_true", help="tear the lab down at the end")
    options = parser.parse_args()
    lab_file = Path(options.lab_file)
    lab = with_tenants(load_lab(lab_file))
    grown = LabNet(lab).rundir / f"{lab_file.stem}+s4.toml"
    if grown.exists() and LabNet(lab).netns("s4") in links.list_netns():
        # An earlier run added s4 and the lab still runs: keep it (up would remove it).
        lab = with_tenants(load_lab(grown))
    if lab.directory is None or not lab.routers or len(lab.clouds) < 2:
        print(f"demo: {lab_file} needs two clouds, a router and a [directory]", file=sys.stderr)
        return 1
    demo = Demo(lab_file, LabNet(lab))
    final_file = lab_file
    try:
        with tempfile.TemporaryDirectory() as scratch:
            capture = Path(scratch) / "underlay.pcap"
            with demo.step("bring up three independent servers in two clouds") as result:
                bring_up(demo, result)
            with demo.step("two tenants, the same 10.0.0.0/24, nodes on every server") as result:
                tenants_and_nodes(demo, result)
            with demo.step("a node opens a connection across clouds: flows appear") as result:
                first_connection(demo, result)
            with demo.step("HTTP across clouds, served from a container") as result:
                http_across_clouds(demo, result, capture)
            with demo.step("the other tenant's nodes are unreachable") as result:
                isolation(demo, result)
            with demo.step("what crossed the underlay") as result:
                underlay_summary(demo, result, capture)
            with demo.step(
                "ways in and out: outbound, a published port, a floating address"
            ) as result:
                ways_in_and_out(demo, result)
            with demo.step("a fourth server joins the running lab") as result:
                final_file = fourth_server(demo, result)
            with demo.step("tenants serve themselves: CLI from anywhere, the portal") as result:
                self_service(demo, result)
    except StepFailed as failure:
        print(f"demo: {failure}", file=sys.stderr)
        return 1
    demo.print_report()
    if options.down:
        console.print(f"tearing down: {len(demo.net.down())} changes")
    else:
        nvi = REPO / ".venv/bin/nvi"
        console.print(f"The lab keeps running. Look inside: {nvi} lab status {final_file}")
        console.print(f"Tear it down:                   {nvi} lab down {final_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
