"""Realise an NVI topology (`nvi.mininet.topo.NviTopo`) with Mininet, and remove it again.

Each NVI server is one Mininet `OVSSwitch` (userspace datapath, OpenFlow 1.3, fail-secure)
with its own `nvi controller serve`; no server knows another. Tenant nodes are Mininet hosts,
published to a federation directory (`nvi directory serve` on loopback) before their ports,
which carry the external_ids of `nvi/ports.py`, are added to their server's bridge.

A run touches nothing it did not create, and names everything it creates after its tag
(`nm` and 4 hex digits):

- the network namespace `<tag>`: Mininet's "root namespace" for this run. Its switches, their
  ports, its private `ovsdb-server` and `ovs-vswitchd` (one for all switches, as in any Mininet),
  the directory and the controllers all live there, so nothing is added to the machine's own
  namespace and no other Open vSwitch is used;
- Mininet's nodes `<tag>_<name>`: bridges, shells (`mininet:<tag>_<name>`) and interfaces
  (`<tag>_<name>-eth<port>`);
- the run directory `$NVI_RUN_DIR/mininet/<tag>` (default `/run/nvi/mininet/<tag>`).

Mininet's machine-wide habits are left out: its cleanup (`mn -c`) is never called, and
`NviMininet` drops the raising of machine-wide limits, the `killall iperf` and the `pkill` of
every terminal tunnel. Leaving a run (normally, by an error, Ctrl-C or SIGTERM) removes it with
`down`, which also cleans up after a run that was killed outright (`--down TAG`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mininet.log import error, info
from mininet.net import Mininet
from mininet.node import Controller, Host, Node, OVSBridge, OVSSwitch
from pyroute2 import netns

from federation.client import DirectoryClient
from nvi.core.config import write_secret
from nvi.core.errors import NviError
from nvi.core.model import parse_pool
from nvi.core.ports import NodePort, vsctl_set_args
from nvi.lab import links, process
from nvi.lab.agents import SERVER_TOKEN
from nvi.lab.nodes import node_mac
from nvi.lab.ovs import OvsInstance
from nvi.mininet.topo import NODE, ROUTER, SEGMENT, SERVER, UPLINK_PORT, NviTopo
from openflow.service import ControllerConfig, Route, render_config

TAG = re.compile(r"nm[0-9a-f]{4}")
DIRECTORY_PORT = 7480
FIRST_CONTROLLER_PORT = 6653
FIRST_METRICS_PORT = 9653  # the controllers share one namespace: one /metrics port each
MAX_IFNAME = 15  # Linux's limit (IFNAMSIZ - 1)
QUIET = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
CONVERSATIONS = "cookie=0x0200000000000000/0xff00000000000000"  # openflow/flows.py class PAIR


def run_root() -> Path:
    """Where runs keep their files; NVI_RUN_DIR moves it (as for labs)."""
    return Path(os.environ.get("NVI_RUN_DIR", "/run/nvi")) / "mininet"


# -- Mininet's nodes, as NVI needs them ---------------------------------------------------------


class NviHost(Host):
    """A tenant node or a router. The kernel fills in checksums (the userspace datapath, TSO on
    or not, rewrites partial ones wrongly and the receiver drops them silently: docs/decisions.md
    "Userspace TSO"), and IPv6 is off so captures show only what NVI sends."""

    def config(self, **params: Any) -> dict:
        result = super().config(**params)
        self.cmd("sysctl -qw", *(f"{key}={value}" for key, value in QUIET.items()))
        for intf in self.intfList():
            self.cmd("ethtool -K", intf, "tx off")
        return result


class Router(NviHost):
    """A plain IPv4 router between underlay segments."""

    def config(self, **params: Any) -> dict:
        result = super().config(**params)
        self.cmd("sysctl -qw net.ipv4.ip_forward=1")
        return result


class NviController(Controller):
    """One server's `nvi controller serve`, started and stopped by its pidfile."""

    def __init__(self, name: str, daemon: process.Daemon, port: int) -> None:
        self.daemon = daemon
        super().__init__(name, ip="127.0.0.1", port=port)

    def checkListening(self) -> None:
        """Nothing else can listen in the run's own namespace (Mininet's check needs telnet)."""

    def start(self) -> None:
        process.ensure_running(self.daemon, timeout=60)

    def stop(self, *args: Any, **kwargs: Any) -> None:
        process.stop(self.daemon)
        Node.stop(self, *args, **kwargs)


class NviSwitch(OVSSwitch):
    """An NVI server's bridge: userspace datapath, fail-secure, OpenFlow 1.3, connected to its
    own controller only. Its node ports carry `nvi/ports.py`'s external_ids from the very
    transaction that adds them, so the controller never sees a node port without them."""

    def __init__(
        self,
        name: str,
        server_controller: NviController,
        hwaddr: str,
        node_ports: dict[str, NodePort],
        **params: Any,
    ) -> None:
        super().__init__(name, failMode="secure", datapath="user", protocols="OpenFlow13", **params)
        self.server_controller = server_controller
        self.hwaddr = hwaddr
        self.node_ports = node_ports

    def start(self, controllers: list[Controller]) -> None:
        super().start([self.server_controller])

    def bridgeOpts(self) -> str:
        return super().bridgeOpts() + " " + shlex.quote(f'other-config:hwaddr="{self.hwaddr}"')

    def intfOpts(self, intf: Any) -> str:
        port = self.node_ports.get(intf.name)
        ids = vsctl_set_args(port.external_ids()) if port else []
        return super().intfOpts(intf) + "".join(" " + shlex.quote(arg) for arg in ids)


class NviMininet(Mininet):
    """Mininet without its machine-wide side effects."""

    def __init__(self, **params: Any) -> None:
        # Mininet.__init__ calls Mininet.init(), which raises limits for the whole machine
        # (sysctls such as kernel.pty.max) once per process; mark it done. (`main` checks root.)
        Mininet.inited = True
        super().__init__(**params)

    def stopXterms(self) -> None:
        """Only this run's terminals (Mininet's also kills every socat tunnel on the machine)."""
        for term in self.terms:
            os.kill(term.pid, signal.SIGKILL)

    def iperf(self, *args: Any, **kwargs: Any) -> list[str]:
        """Mininet's runs `killall -9 iperf`, which ends every iperf on the machine."""
        error(
            "iperf: not in NVI examples (see README): e.g. `r2 iperf3 -s -1 &`, `r1 iperf3 -c r2`\n"
        )
        return []


# -- what every way of running NVI on Mininet shares (this module's NviNet, and mn.py) ----------


def start_directory(folder: Path, netns_name: str, port: int = DIRECTORY_PORT) -> None:
    """`nvi directory init` into `folder`, then its `nvi directory serve` on loopback:port, in
    namespace `netns_name` ("" for this thread's own), by pidfile."""
    init = subprocess.run(
        [sys.executable, "-m", "nvi", "directory", "init", str(folder)]
        + ["--host", "127.0.0.1", "--port", str(port), "-o", "json"],
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        raise NviError(f"directory init failed: {init.stderr.strip()}")
    config = str(folder / "directory.toml")
    process.ensure_running(
        process.Daemon(
            name="directory",
            netns=netns_name,
            argv=(sys.executable, "-m", "nvi", "directory", "serve", "--config", config),
            rundir=folder,
            ready=lambda: _accepts(port),
        ),
        timeout=30,
    )


def controller_daemon(
    folder: Path,
    netns_name: str,
    *,
    address: str,
    directory_url: str,
    ca_file: Path,
    ovsdb: str,
    port: int,
    metrics_port: int,
    uplink: str,
    routes: list[tuple[str, str | None]],
) -> tuple[process.Daemon, int]:
    """One server's `nvi controller serve`: its config (`folder/controller.toml`, rendered from
    `ControllerConfig`) names only that server's facts and the directory; its credential is
    `folder/server.token`."""
    config = ControllerConfig(
        address=address,
        directory=directory_url,
        token_file=Path(SERVER_TOKEN),
        ca_file=Path(ca_file),
        ovsdb=ovsdb,
        listen_port=port,
        metrics_port=metrics_port,
        uplink=uplink,
        routes=[Route(prefix=prefix, via=via) for prefix, via in routes],
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "controller.toml").write_text(render_config(config))
    argv = (sys.executable, "-m", "nvi", "controller", "serve", "--config")
    daemon = process.Daemon(
        name="controller",
        netns=netns_name,
        argv=(*argv, str(folder / "controller.toml")),
        rundir=folder,
        ready=folder / "controller.ready",
    )
    return daemon, port


# -- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A tenant node as published: what the directory and the node's port know about it."""

    name: str
    tenant: str
    network: str
    server: str
    ip: str
    cidr: str
    gateway: str
    mac: str
    locator: str
    node_id: str

    def port(self) -> NodePort:
        return NodePort(
            node_id=self.node_id,
            tenant=self.tenant,
            network=self.network,
            ip=self.ip,
            cidr=self.cidr,
            gateway=self.gateway,
            locator=self.locator,
            mac=self.mac,
        )


class NviNet:
    """One run of a topology: `with NviNet(topo) as run: ...` builds it, and leaving the block
    removes it (`down`), whatever happened inside."""

    def __init__(self, topo: NviTopo, tag: str | None = None) -> None:
        self.topo = topo
        self.tag = tag or f"nm{secrets.token_hex(2)}"
        self.rundir = run_root() / self.tag
        self.ovs = OvsInstance(netns=self.tag, rundir=self.rundir / "ovs")
        self.net: NviMininet | None = None
        self.members: dict[str, Member] = {}
        self._saved_environ: dict[str, str] | None = None
        self._entered = False
        self._owner = os.getpid()

    def name(self, short: str) -> str:
        """The Mininet (and so bridge, shell) name of a topology member."""
        return f"{self.tag}_{short}"

    def intf(self, short: str, port: int) -> str:
        return f"{self.name(short)}-eth{port}"

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{DIRECTORY_PORT}"

    @property
    def ca_file(self) -> Path:
        """The CA `nvi directory init` made for the run's directory."""
        return self.rundir / "directory" / "ca.crt"

    def __enter__(self) -> NviNet:
        try:
            self.start()
        except Exception:
            _show_logs(self.rundir)  # the run directory goes with the run
            self.stop(graceful=False)
            raise
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.stop(graceful=kind is None)

    # -- up ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._check_names()
        if self.tag in links.list_netns() or self.rundir.exists():
            raise NviError(f"run {self.tag} exists; remove it with --down {self.tag}")
        links.ensure_netns(self.tag, QUIET)
        self.rundir.mkdir(parents=True)
        netns.pushns()
        self._entered = True
        netns.setns(self.tag, flags=0)  # from here on, Mininet's "root namespace" is the run's own
        self._saved_environ = dict(os.environ)
        os.environ.update(self.ovs.env)  # every ovs-vsctl/ofctl, Mininet's included, uses ours
        info(f"*** Run {self.tag}: namespace {self.tag}, files in {self.rundir}\n")
        self.ovs.ensure_database()
        for daemon in self.ovs.daemons():
            process.ensure_running(daemon)
        self._start_directory()
        self.members = asyncio.run(self._publish())
        self._build()
        assert self.net is not None
        self.net.start()
        self._wait_ready()

    def _check_names(self) -> None:
        if not TAG.fullmatch(self.tag):
            raise NviError(f"tag {self.tag!r}: must be nm and 4 hex digits, e.g. nm3f2a")
        for node1, node2, link in self.topo.links(withInfo=True):
            for name in (self.intf(node1, link["port1"]), self.intf(node2, link["port2"])):
                if len(name) > MAX_IFNAME:
                    raise NviError(f"interface name {name} is longer than {MAX_IFNAME} characters")

    def _start_directory(self) -> None:
        start_directory(self.rundir / "directory", self.tag)

    async def _publish(self) -> dict[str, Member]:
        """Tenants and networks into the directory, as an operator would (admin token); each
        server enrolled with its locator pool; each node published by its server (with the
        server's own credential and its tenant's token) at the next locator of that pool."""
        admin = (self.rundir / "directory" / "admin.token").read_text().strip()
        pools = {s: iter(parse_pool(self.topo.nodeInfo(s)["locators"])) for s in self._servers}
        members = {}
        async with DirectoryClient(self.directory_url, admin, ca_file=self.ca_file) as client:
            networks, tenant_tokens = {}, {}
            for tenant, tenant_networks in self.topo.tenants.items():
                await client.create_tenant(tenant)
                tenant_tokens[tenant] = (await client.create_token(tenant, "mininet nodes")).token
                for network, cidr in tenant_networks.items():
                    networks[tenant, network] = await client.create_network(tenant, network, cidr)
            credentials = {server: await self._enroll(client, server) for server in self._servers}
        for name in self.topo.members(NODE):
            node = self.topo.nodeInfo(name)
            subnet = networks[node["tenant"], node["network"]]
            locator = next(pools[node["server"]], None)
            if locator is None:
                raise NviError(f"server {node['server']}: locator pool is exhausted")
            async with DirectoryClient(
                self.directory_url,
                credentials[node["server"]],
                tenant_token=tenant_tokens[node["tenant"]],
                ca_file=self.ca_file,
            ) as server:
                record = await server.create_node(
                    node["tenant"],
                    name,
                    kind="container",
                    network=node["network"],
                    ip=node["ip"],
                    mac=node_mac(node["tenant"], name),
                    locator=str(locator),
                )
            members[name] = Member(
                name=name,
                tenant=record.tenant,
                network=record.network,
                server=record.server,
                ip=record.ip,
                cidr=subnet.cidr,
                gateway=subnet.gateway,
                mac=record.mac,
                locator=record.locator,
                node_id=record.id,
            )
        return members

    async def _enroll(self, admin: DirectoryClient, server: str) -> str:
        """Enroll a server with its locator pool, once, as its operator would; its credential
        (`<server>/server.token`) is what its controller presents, and no other server's."""
        enrolled = await admin.enroll_server(server, [self.topo.nodeInfo(server)["locators"]])
        (self.rundir / server).mkdir()
        write_secret(self.rundir / server / SERVER_TOKEN, enrolled.token)
        return enrolled.token

    @property
    def _servers(self) -> list[str]:
        return self.topo.members(SERVER)

    def _controller_daemon(self, server: str, index: int) -> tuple[process.Daemon, int]:
        """The server's controller config names only its own facts, and the directory."""
        facts = self.topo.nodeInfo(server)
        return controller_daemon(
            self.rundir / server,
            self.tag,
            address=facts["address"],
            directory_url=self.directory_url,
            ca_file=self.ca_file,
            ovsdb=f"unix:{self.ovs.db_socket}",
            port=FIRST_CONTROLLER_PORT + index,
            metrics_port=FIRST_METRICS_PORT + index,
            uplink=self.intf(server, UPLINK_PORT),
            routes=self.topo.routes(server),
        )

    def _build(self) -> None:
        topo, links_ = self.topo, self.topo.links(sort=True, withInfo=True)
        self.net = net = NviMininet(topo=None, build=False, controller=None, host=NviHost)
        dpids = iter(range(1, 1 << 16))
        for segment in topo.members(SEGMENT):
            net.addSwitch(
                self.name(segment), cls=OVSBridge, datapath="user", dpid=f"{next(dpids):x}"
            )
        for index, server in enumerate(self._servers):
            daemon, port = self._controller_daemon(server, index)
            controller = net.addController(NviController(self.name(f"c{server}"), daemon, port))
            node_ports = {
                self.intf(server, link["port2"]): self.members[node1].port()
                for node1, node2, link in links_
                if node2 == server and node1 in self.members
            }
            net.addSwitch(
                self.name(server),
                cls=NviSwitch,
                server_controller=controller,
                hwaddr=_local_mac(server),
                node_ports=node_ports,
                dpid=f"{next(dpids):x}",
            )
        for router in topo.members(ROUTER):
            net.addHost(self.name(router), cls=Router, ip=None)
        for member in self.members.values():
            prefixlen = ipaddress.IPv4Network(member.cidr).prefixlen
            net.addHost(
                self.name(member.name),
                ip=f"{member.ip}/{prefixlen}",
                defaultRoute=f"via {member.gateway}",
            )
        for node1, node2, link in links_:
            params = {k: v for k, v in link.items() if k not in ("node1", "node2")}
            if node1 in self.members:
                params["addr1"] = self.members[node1].mac
            net.addLink(
                self.name(node1),
                self.name(node2),
                intfName1=self.intf(node1, link["port1"]),
                intfName2=self.intf(node2, link["port2"]),
                **params,
            )
        net.build()
        _record_shells(self.rundir, net)
        # The CLI also knows every node by its topology name: `r1 ping r2`.
        net.nameToNode.update({short: net[self.name(short)] for short in topo.nodes()})
        net.nameToNode.update({f"c{s}": net[self.name(f"c{s}")] for s in self._servers})

    def _wait_ready(self, timeout: float = 60) -> None:
        """Every switch connected, every controller aware of its nodes (it read their ports)."""
        assert self.net is not None
        if not self.net.waitConnected(timeout=timeout):
            raise NviError("a switch did not connect to its controller")
        for server in self._servers:
            expected = sum(1 for m in self.members.values() if m.server == server)
            stats = self.rundir / server / "controller.stats.json"
            deadline = time.monotonic() + timeout
            while _read_json(stats).get("nodes") != expected:
                if time.monotonic() > deadline:
                    raise NviError(f"the controller of {server} did not find its {expected} nodes")
                time.sleep(0.1)

    # -- down -------------------------------------------------------------------------------

    def stop(self, graceful: bool) -> None:
        """Mininet's own stop when all went well, then `down` in any case (idempotent)."""
        if os.getpid() != self._owner:
            # A forked copy of this process (pyroute2 forks helpers) that was interrupted
            # unwinds to here: it must end at once, not remove the run from under its parent.
            os._exit(1)
        with _signals_held():
            if self.net is not None:
                _record_shells(self.rundir, self.net)  # also those of a build cut short
                if graceful:
                    try:
                        self.net.stop()
                    except Exception as failure:  # noqa: BLE001 - `down` below removes the rest
                        error(f"*** net.stop failed ({failure}); removing the run anyway\n")
            if self._entered:
                netns.popns()
                self._entered = False
            if self._saved_environ is not None:
                os.environ.clear()
                os.environ.update(self._saved_environ)
                self._saved_environ = None
            for line in down(self.tag):
                info(f"*** {line}\n")


def down(tag: str) -> list[str]:
    """Remove everything run `tag` created, and nothing else: its nodes' shells (and what runs
    in their process groups), its daemons (by pidfile), any other process in its namespace, the
    namespace itself (with every link inside) and its run directory. Safe to repeat, and safe
    after the example was killed outright."""
    if not TAG.fullmatch(tag):
        raise NviError(f"tag {tag!r}: must be nm and 4 hex digits, e.g. nm3f2a")
    rundir = run_root() / tag
    removed = []
    for name, (pid, started) in _read_json(rundir / "shells.json").items():
        if _end_group(pid, started):
            removed.append(f"ended {name}")
    for pidfile in sorted(rundir.glob("*/*.pid")):
        if process.stop(process.Daemon(pidfile.stem, tag, (), pidfile.parent, pidfile.parent)):
            removed.append(f"stopped {pidfile.parent.name}/{pidfile.stem}")
    if tag in links.list_netns():
        for pid in links.netns_pids(tag):
            if pid != os.getpid():
                process.terminate(pid)
        links.remove_netns(tag)
        removed.append(f"removed namespace {tag}")
    if rundir.exists():
        shutil.rmtree(rundir)
        removed.append(f"removed {rundir}")
    return removed


@contextlib.contextmanager
def private_run(tag: str) -> Iterator[Path]:
    """As `NviNet` isolates a run, for any Mininet network built inside the block: this thread
    enters a new namespace `tag` (Mininet's "root namespace" from then on) with its own
    `ovsdb-server` and `ovs-vswitchd` (every ovs-* call, Mininet's included, finds them through
    OVS_RUNDIR), and Mininet's machine-wide limits are marked as raised. Leaving the block
    returns to the previous namespace and environment and removes the run (`down`). Yields the
    run directory."""
    if not TAG.fullmatch(tag):
        raise NviError(f"tag {tag!r}: must be nm and 4 hex digits, e.g. nm3f2a")
    rundir = run_root() / tag
    if tag in links.list_netns() or rundir.exists():
        raise NviError(f"run {tag} exists; remove it with --down {tag}")
    ovs = OvsInstance(netns=tag, rundir=rundir / "ovs")
    saved = dict(os.environ)
    links.ensure_netns(tag, QUIET)
    rundir.mkdir(parents=True)
    netns.pushns()
    try:
        netns.setns(tag, flags=0)
        os.environ.update(ovs.env)
        Mininet.inited = True
        ovs.ensure_database()
        for daemon in ovs.daemons():
            process.ensure_running(daemon)
        yield rundir
    finally:
        with _signals_held():
            netns.popns()
            os.environ.clear()
            os.environ.update(saved)
            down(tag)


def _record_shells(rundir: Path, net: Mininet) -> None:
    """Pid and start time of every node's shell, for `down` (which may run in another process)."""
    shells = {
        node.name: (node.shell.pid, _started(node.shell.pid))
        for node in (*net.hosts, *net.switches, *net.controllers)
        if node.shell is not None
    }
    (rundir / "shells.json").write_text(json.dumps(shells))


def _end_group(pid: int, started: int | None) -> bool:
    """End a node shell's process group the way Mininet ends a node (SIGHUP), then SIGKILL;
    only while the group is ours: its leader is the same process, or gone (a pid that still
    names a process group is never handed to a new process)."""
    if _started(pid) not in (None, started):
        return False
    ended = False
    for sig in (signal.SIGHUP, signal.SIGKILL):
        deadline = time.monotonic() + 2
        try:
            os.killpg(pid, sig)
            ended = True
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                os.killpg(pid, 0)
                time.sleep(0.02)
        except ProcessLookupError:
            break
    return ended


def _started(pid: int) -> int | None:
    """Kernel start time of a live process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM must not cut the removal short."""
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _accepts(port: int) -> bool:
    """Whether something in the run's namespace (this thread's) accepts TCP on loopback:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _show_logs(rundir: Path, lines: int = 5) -> None:
    for log in sorted(rundir.glob("*/*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        error(f"*** {log.relative_to(rundir)}:\n" + "".join(f"    {line}\n" for line in tail))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _local_mac(name: str) -> str:
    """A fixed, locally administered MAC for a server's bridge: the same in every flow dump."""
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))
