"""Realise a lab description on this machine: namespaces, underlay segments, routers, and one
independent Open vSwitch per server. Like Mininet's `net.py`, to `spec.py`'s `topo.py`.

Naming is the tag: every namespace of lab L is `nvi-L-<member>` and everything else the lab
creates (links, bridges, processes, files) lives inside those namespaces or under the lab's run
directory. Lab names contain no dash, so one lab's prefix never matches another's, and `down`
can find everything (even after a crash, even if the lab file changed) by prefix alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import netns

from federation.client import DirectoryClient
from federation.errors import NotFound
from hostagent.client import AgentClient
from nvi.core.config import write_secret
from nvi.core.errors import NviError
from nvi.core.ports import HOST_COOKIE, vsctl_rows
from nvi.core.tls import KeyPair, ensure_ca, ensure_certificate
from nvi.lab import access, clientconfig, links
from nvi.lab.agents import (
    SERVER_TOKEN,
    ensure_agent_tls,
    lab_agent,
    lab_docker_root,
    lab_dockerd,
    remove_lab_vms,
    write_config,
)
from nvi.lab.ovs import BRIDGE, UPLINK, OvsInstance, host_flows
from nvi.lab.process import Daemon, ensure_running, running_pid, stop, terminate
from nvi.lab.spec import Lab, Server, SingleHomed
from openflow.service import METRICS_PORT, ControllerConfig, render_config

UNDERLAY_BRIDGE = "br0"
# Each server's controller runs in the server's namespace: loopback is that server's own.
CONTROLLER_PORT = 6653
CONTROLLER_TARGET = f"tcp:127.0.0.1:{CONTROLLER_PORT}"
CONTROLLER_METRICS = f"http://127.0.0.1:{METRICS_PORT}/metrics"
_QUIET = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
T = TypeVar("T")


def run_root() -> Path:
    """Where labs keep sockets, pidfiles and logs; NVI_RUN_DIR overrides the default."""
    return Path(os.environ.get("NVI_RUN_DIR", "/run/nvi")) / "labs"


@dataclass
class LabNet:
    lab: Lab
    root: Path = field(default_factory=run_root)

    @property
    def prefix(self) -> str:
        return f"nvi-{self.lab.name}-"

    @property
    def rundir(self) -> Path:
        return self.root / self.lab.name

    def netns(self, member: str) -> str:
        return f"{self.prefix}{member}"

    def ovs(self, server: Server) -> OvsInstance:
        return OvsInstance(netns=self.netns(server.name), rundir=self.rundir / server.name)

    def daemons(self, server: Server) -> list[Daemon]:
        """Every supervised process of a server, in start order."""
        with_directory = [self.controller_daemon(server), self.agent_daemon(server)]
        return [*self.ovs(server).daemons(), *(with_directory if self.lab.directory else [])]

    def controller_daemon(self, server: Server) -> Daemon:
        folder = self.rundir / server.name
        return Daemon(
            name="controller",
            netns=self.netns(server.name),
            argv=(
                sys.executable,
                "-m",
                "nvi",
                "controller",
                "serve",
                "--config",
                str(folder / "controller.toml"),
            ),
            rundir=folder,
            ready=folder / "controller.ready",
        )

    def agent_daemon(self, server: Server) -> Daemon:
        """The server's host agent (nvi.lab.agents); it needs the directory and the engine."""
        assert self.lab.directory is not None
        ns = self.netns(server.name)
        directory = self.lab.directory.url
        return lab_agent(self.lab.name, server, self.ovs(server), directory, ns, self.ca_file)[1]

    def docker_daemon(self) -> Daemon:
        """The lab's one Docker engine, in the root namespaces, for every server's agent."""
        launch = self.netns(self.lab.directory.name) if self.lab.directory else ""
        return lab_dockerd(self.lab.name, launch)

    def directory_daemon(self) -> Daemon:
        directory = self.lab.directory
        assert directory is not None
        folder = self.rundir / directory.name
        ns = self.netns(directory.name)
        return Daemon(
            name="directory",
            netns=ns,
            argv=(
                sys.executable,
                "-m",
                "nvi",
                "directory",
                "serve",
                "--config",
                str(folder / "directory.toml"),
            ),
            rundir=folder,
            ready=lambda: links.accepts_tcp(ns, directory.address, directory.port),
        )

    def outside_daemon(self) -> Daemon:
        """The outside host's web server, in its own namespace."""
        outside = self.lab.outside
        assert outside is not None
        ns = self.netns(outside.name)
        return Daemon(
            name="outside",
            netns=ns,
            argv=(
                sys.executable,
                "-m",
                "nvi.lab.outside",
                outside.address,
                str(outside.port),
            ),
            rundir=self.rundir / outside.name,
            ready=lambda: links.accepts_tcp(ns, outside.address, outside.port),
        )

    def portal_daemon(self) -> Daemon | None:
        """The tenants' portal, in this machine's own namespace (through the access link)."""
        portal, directory = self.lab.portal, self.lab.directory
        if portal is None or directory is None or self.access is None:
            return None
        return Daemon(
            name="portal",
            netns="",
            argv=(
                sys.executable,
                "-m",
                "nvi",
                "portal",
                "serve",
                "--directory",
                directory.url,
                "--ca-file",
                str(self.ca_file),
                "--listen",
                f"127.0.0.1:{portal.port}",
            ),
            rundir=self.rundir / "portal",
            ready=lambda: links.accepts_tcp("", "127.0.0.1", portal.port),
        )

    @property
    def access(self) -> access.AccessLink | None:
        """The access link from this machine's root namespace (nvi.lab.access)."""
        return access.plan(self.lab)

    @property
    def routing(self) -> Lab:
        """The lab as its members route: with the access link's segment."""
        return access.routing(self.lab, self.access)

    @property
    def client_config(self) -> Path:
        return self.rundir / clientconfig.CLIENT_CONFIG

    def write_client_config(self) -> str | None:
        """Write `client.toml` with a profile per tenant whose token the lab keeps, and the
        admin's; returns its default profile (None for a lab without a directory)."""
        directory = self.lab.directory
        if directory is None:
            return None
        tenants = {path.stem: path for path in (self.rundir / "tenants").glob("*.token")}
        text = clientconfig.render(
            self.lab.name,
            directory.url,
            self.ca_file,
            self.rundir / directory.name / "admin.token",
            tenants,
        )
        _write_if_changed(self.client_config, text)
        return clientconfig.default_profile(text)

    @property
    def ca_file(self) -> Path:
        """The lab's CA: it signs every lab service's certificate; every lab client trusts it."""
        return self.rundir / "ca.crt"

    def admin_token(self) -> str:
        """The directory's admin credential (the lab operator's)."""
        assert self.lab.directory is not None
        return (self.rundir / self.lab.directory.name / "admin.token").read_text().strip()

    def server_token(self, server: Server) -> str:
        """A server's own credential, from its enrolment."""
        return (self.rundir / server.name / SERVER_TOKEN).read_text().strip()

    def call_directory(
        self,
        work: Callable[[DirectoryClient], Awaitable[T]],
        token: str | None = None,
        tenant_token: str | None = None,
    ) -> T:
        """Run `work` with a client of the lab's directory (the admin's unless `token` says
        otherwise), from the directory's own namespace: the lab's machine is not on the
        underlay. Namespaces are per thread, so on a thread of its own."""
        directory = self.lab.directory
        assert directory is not None

        async def session() -> T:
            async with DirectoryClient(
                directory.url,
                token or self.admin_token(),
                tenant_token=tenant_token,
                ca_file=self.ca_file,
            ) as client:
                return await work(client)

        def run() -> T:
            netns.pushns(self.netns(directory.name))
            try:
                return asyncio.run(session())
            finally:
                netns.popns()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(run).result()

    # -- up -------------------------------------------------------------------------------

    def up(self) -> list[str]:
        """Create or repair the lab; returns what changed (empty when it was already whole)."""
        _require_root()
        self.rundir.mkdir(parents=True, exist_ok=True)
        (self.rundir / "lab.json").write_text(self.lab.model_dump_json(indent=2))
        changes: list[str] = []
        wanted = {self.netns(name) for name in self.lab.member_names()}
        # A server's node namespaces (`<server ns>.<node>`) live and die with the server.
        for stale in sorted(ns for ns in self._our_netns() if ns.split(".")[0] not in wanted):
            changes += self._drain(stale)
            self._remove_member(stale)
            changes.append(f"removed {stale} (no longer in the lab file)")
        for cloud in self.lab.clouds:
            changes += self._up_cloud(cloud.name)
        for router in self.lab.routers:
            changes += self._up_router(router.name)
        if self.access:
            changes += access.ensure(self.access, self.netns(self.access.router), self.lab)
        if self.lab.directory:
            ca, made = ensure_ca(self.rundir, f"NVI lab {self.lab.name}")
            changes += [f"created the lab's CA {ca.cert_file}"] if made else []
            changes += self._up_directory(ca)
            pid, started = ensure_running(self.docker_daemon(), timeout=30)
            changes += [f"started the lab's Docker engine (pid {pid})"] if started else []
        if self.lab.outside:
            changes += self._up_outside()
        for server in self.lab.servers:
            changes += self._up_server(server)
        self.write_client_config()
        portal = self.portal_daemon()
        if portal and self.lab.portal:
            pid, started = ensure_running(portal)
            started_portal = f"started the portal at {self.lab.portal.url} (pid {pid})"
            changes += [started_portal] if started else []
        return changes

    def _up_cloud(self, name: str) -> list[str]:
        ns = self.netns(name)
        changes = []
        if links.ensure_netns(ns, _QUIET):
            changes.append(f"created namespace {ns}")
        if links.ensure_bridge(ns, UNDERLAY_BRIDGE):
            changes.append(f"created underlay segment of cloud {name}")
        if links.ensure_up(ns, UNDERLAY_BRIDGE):
            changes.append(f"set underlay segment of cloud {name} up")
        return changes

    def _attach(self, member: str, cloud: str, inside_name: str) -> list[str]:
        """A veth from the member's namespace into the cloud's segment; a new veth is always
        the first change reported."""
        ns, cloud_ns = self.netns(member), self.netns(cloud)
        changes = []
        if links.ensure_veth(cloud_ns, member, ns, inside_name):
            changes.append(self._linked(member, cloud))
        if links.ensure_up(cloud_ns, member, master=UNDERLAY_BRIDGE):
            changes.append(f"attached {member} to the segment of cloud {cloud}")
        if links.ensure_up(ns, inside_name):
            changes.append(f"set {inside_name} of {member} up")
        return changes

    @staticmethod
    def _linked(member: str, cloud: str) -> str:
        return f"linked {member} to cloud {cloud}"

    def _up_router(self, name: str) -> list[str]:
        router = next(r for r in self.lab.routers if r.name == name)
        ns = self.netns(name)
        changes = []
        if links.ensure_netns(ns, {**_QUIET, "net.ipv4.ip_forward": "1"}):
            changes.append(f"created namespace {ns}")
        for cloud, address in router.addresses.items():
            changes += self._attach(name, cloud, cloud)
            if links.ensure_address(ns, cloud, address, self.lab.cloud(cloud).network.prefixlen):
                changes.append(f"router {name}: address {address} on cloud {cloud}")
        for subnet, gateway in self.routing.gateways(set(router.addresses), name):
            if links.ensure_route(ns, subnet, gateway):
                changes.append(f"router {name}: route to {subnet} via {gateway}")
        return changes

    def _up_host(self, host: SingleHomed, label: str) -> list[str]:
        """A single-homed member (the directory, the outside host): its namespace, its eth0
        on the cloud with its address, and routes via the routers to the other clouds."""
        ns = self.netns(host.name)
        changes = []
        if links.ensure_netns(ns, _QUIET):
            changes.append(f"created namespace {ns}")
        changes += self._attach(host.name, host.cloud, "eth0")
        prefixlen = self.lab.cloud(host.cloud).network.prefixlen
        if links.ensure_address(ns, "eth0", host.address, prefixlen):
            changes.append(f"{label}: address {host.address}")
        for subnet, gateway in self.routing.gateways({host.cloud}, host.name):
            if links.ensure_route(ns, subnet, gateway):
                changes.append(f"{label}: route to {subnet} via {gateway}")
        return changes

    def _up_outside(self) -> list[str]:
        """The outside host: a namespace on its cloud, routes via the routers, its web server."""
        outside = self.lab.outside
        assert outside is not None
        changes = self._up_host(outside, "outside host")
        pid, started = ensure_running(self.outside_daemon())
        changes += (
            [f"started the outside host's web server {outside.url} (pid {pid})"] if started else []
        )
        return changes

    def _up_directory(self, ca: KeyPair) -> list[str]:
        directory = self.lab.directory
        assert directory is not None
        folder = self.rundir / directory.name
        changes = self._up_host(directory, "directory")
        if not (folder / "directory.toml").exists():
            shutil.rmtree(folder, ignore_errors=True)
            init = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "nvi",
                    "directory",
                    "init",
                    str(folder),
                    "--host",
                    directory.address,
                    "--port",
                    str(directory.port),
                    "--ca-dir",
                    str(self.rundir),
                    "-o",
                    "json",
                ],
                capture_output=True,
                text=True,
            )
            if init.returncode != 0:
                raise NviError(f"directory init failed: {init.stderr.strip()}")
            changes.append("directory: created its configuration and credentials")
        if ensure_certificate(ca, folder, "directory", [directory.address])[1]:
            stop(self.directory_daemon())  # it reads its certificate only as it starts
            changes.append("directory: issued its certificate")
        pid, started = ensure_running(self.directory_daemon())
        if started:
            changes.append(f"directory: started (pid {pid}) at {directory.url}")
        return changes

    def _ensure_controller_config(self, server: Server) -> bool:
        """The controller's config names only this server's facts, the directory, and the
        underlay's infrastructure (routers, the directory), never another server."""
        directory = self.lab.directory
        assert directory is not None
        folder = self.rundir / server.name
        routers = [address for router in self.lab.routers for address in router.addresses.values()]
        # Every cloud is underlay but the outside host's (it stands for the internet); not "the
        # clouds with servers", which would change every server's config as servers come and go.
        internet = self.lab.outside.cloud if self.lab.outside else None
        config = ControllerConfig(
            address=server.address,
            directory=directory.url,
            token_file=Path(SERVER_TOKEN),
            ca_file=self.ca_file,
            ovsdb=f"unix:{self.ovs(server).db_socket}",
            listen_port=CONTROLLER_PORT,
            metrics_port=METRICS_PORT,
            idle_timeout=self.lab.controller.idle_timeout,
            infrastructure=sorted({IPv4Network(a) for a in [*routers, directory.address]}),
            underlay=sorted({IPv4Network(c.subnet) for c in self.lab.clouds if c.name != internet}),
        )
        return _write_if_changed(folder / "controller.toml", render_config(config))

    def _ensure_enrolled(self, server: Server) -> list[str]:
        """Enroll the server with its locator pool, as an operator does once per server with
        the directory's admin credential; a credential lost with the run directory is
        revoked and replaced."""
        path = self.rundir / server.name / SERVER_TOKEN
        if path.exists():
            return []

        async def enroll(client: DirectoryClient) -> str:
            try:
                await client.revoke_server(server.name)
            except NotFound:
                pass
            floating = [server.floating] if server.floating else []
            enrolled = await client.enroll_server(server.name, [server.locators], floating=floating)
            return enrolled.token

        write_secret(path, self.call_directory(enroll))
        return [f"server {server.name}: enrolled with the directory (pool {server.locators})"]

    def _up_server(self, server: Server) -> list[str]:
        ns = self.netns(server.name)
        ovs = self.ovs(server)
        changes = []
        if links.ensure_netns(ns, _QUIET):
            changes.append(f"created namespace {ns}")
        attached = self._attach(server.name, server.cloud, UPLINK)
        changes += attached
        if ovs.ensure_database():
            changes.append(f"server {server.name}: created OVS database")
        if self.lab.directory:
            changes += self._ensure_enrolled(server)
        if self.lab.directory and self._ensure_controller_config(server):
            changes.append(f"server {server.name}: wrote controller configuration")
        for daemon in ovs.daemons():
            changes += self._ensure_running(server, daemon)
        if self._ensure_bridge(server, ovs):
            changes.append(f"server {server.name}: configured bridge {BRIDGE}")
        elif attached[:1] == [self._linked(server.name, server.cloud)]:
            # vswitchd keeps reading from the old uplink; a new veth needs a fresh port.
            ovs.vsctl("del-port", BRIDGE, UPLINK)
            ovs.vsctl(
                "add-port", BRIDGE, UPLINK, "--", "set", "interface", UPLINK, "ofport_request=1"
            )
            changes.append(f"server {server.name}: re-plugged {UPLINK} into {BRIDGE}")
        if links.ensure_up(ns, BRIDGE):
            changes.append(f"server {server.name}: set {BRIDGE} up")
        prefixlen = self.lab.cloud(server.cloud).network.prefixlen
        if links.ensure_address(ns, BRIDGE, server.address, prefixlen):
            changes.append(f"server {server.name}: address {server.address}")
        for subnet, gateway in self.routing.gateways({server.cloud}, server.name):
            if links.ensure_route(ns, subnet, gateway):
                changes.append(f"server {server.name}: route to {subnet} via {gateway}")
        ovs.wait_for_bridge()
        if self._ensure_host_flows(server, ovs):
            changes.append(f"server {server.name}: installed host flows")
        if self.lab.directory:
            changes += self._ensure_running(server, self.controller_daemon(server))
            ovs.wait_for_controller()
            ca = KeyPair(self.ca_file, self.rundir / "ca.key")
            tcp, issued = ensure_agent_tls(ca, server, ovs.rundir)
            config, agent = lab_agent(
                self.lab.name, server, ovs, self.lab.directory.url, ns, self.ca_file, tcp
            )
            if (write_config(config, ovs.rundir) or issued) and stop(agent):
                changes.append(f"server {server.name}: restarted its agent with a new config")
            pid, started = ensure_running(agent, timeout=60)
            changes += [f"server {server.name}: started agent (pid {pid})"] if started else []
        return changes

    @staticmethod
    def _ensure_running(server: Server, daemon: Daemon) -> list[str]:
        pid, started = ensure_running(daemon)
        return [f"server {server.name}: started {daemon.name} (pid {pid})"] if started else []

    def _bridge_settings(self, server: Server) -> dict[str, str]:
        wanted = {
            "datapath_type": "netdev",
            "fail_mode": "secure",
            "protocols": "OpenFlow13",
            "external_ids:nvi-lab": self.lab.name,
            "external_ids:nvi-server": server.name,
        }
        if self.lab.directory:
            # In-band control would add hidden flows that let traffic bypass the controller.
            wanted["other_config:disable-in-band"] = "true"
        return wanted

    def _ensure_bridge(self, server: Server, ovs: OvsInstance) -> bool:
        wanted = self._bridge_settings(server)
        current = self._bridge_config(ovs)
        if current is not None and all(current.get(k) == v for k, v in wanted.items()):
            in_place = UPLINK in ovs.vsctl("list-ports", BRIDGE).split()
            if not self.lab.directory:
                in_place &= ovs.vsctl("get-controller", BRIDGE).strip() == ""
            else:
                in_place &= ovs.vsctl("get-controller", BRIDGE).strip() == CONTROLLER_TARGET
            if in_place:
                return False
        ovs.vsctl(
            "--may-exist",
            "add-br",
            BRIDGE,
            "--",
            "set",
            "bridge",
            BRIDGE,
            *(f"{key}={value}" for key, value in wanted.items()),
            "--",
            "--may-exist",
            "add-port",
            BRIDGE,
            UPLINK,
            "--",
            "set",
            "interface",
            UPLINK,
            "ofport_request=1",
        )
        if self.lab.directory:
            ovs.vsctl(
                "set-controller",
                BRIDGE,
                CONTROLLER_TARGET,
                "--",
                "set",
                "controller",
                BRIDGE,
                "max_backoff=1000",
                "connection_mode=out-of-band",
            )
        return True

    @staticmethod
    def _bridge_config(ovs: OvsInstance) -> dict[str, str] | None:
        """The bridge's settings as flat `column[:key]` -> value, or None without a bridge."""
        if BRIDGE not in ovs.vsctl("list-br").split():
            return None
        columns = "datapath_type,fail_mode,protocols,external_ids,other_config"
        (row,) = vsctl_rows(
            ovs.vsctl("--format=json", f"--columns={columns}", "list", "bridge", BRIDGE)
        )
        flat = {}
        for column, value in row.items():
            if isinstance(value, dict):
                flat.update({f"{column}:{k}": v for k, v in value.items()})
            elif isinstance(value, list):
                flat[column] = ",".join(value)
            else:
                flat[column] = value
        return flat

    @staticmethod
    def _ensure_host_flows(server: Server, ovs: OvsInstance) -> bool:
        wanted = host_flows(server.address)
        present = ovs.ofctl("dump-flows", f"cookie={HOST_COOKIE:#x}/-1").strip().splitlines()[1:]
        if len(present) == len(wanted):
            return False
        ovs.ofctl("del-flows", f"cookie={HOST_COOKIE:#x}/-1")
        ovs.ofctl("add-flows", "-", stdin="\n".join(wanted) + "\n")
        return True

    # -- down -----------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything this lab created, and nothing else; safe after a crash."""
        _require_root()
        portal = self.portal_daemon()
        removed = ["stopped the portal"] if portal and stop(portal) else []
        removed += access.remove(self.access)
        removed += [self._remove_member(ns) for ns in self._our_netns()]
        removed += remove_lab_vms(self.lab.name)
        # Last: the engine stops the containers of the (already stopped) agents as it exits.
        if stop(self.docker_daemon(), timeout=30):
            removed.append("stopped the lab's Docker engine")
        shutil.rmtree(lab_docker_root(self.lab.name), ignore_errors=True)
        if self.rundir.exists():
            shutil.rmtree(self.rundir)
            removed.append(f"removed {self.rundir}")
        return removed

    def _our_netns(self) -> list[str]:
        return [ns for ns in links.list_netns() if ns.startswith(self.prefix)]

    def _drain(self, ns: str) -> list[str]:
        """A server leaving the lab first has its agent delete its nodes and their records,
        with the lab operator's admin credential (as an operator runs `nvi agent drain`);
        then its enrolment is revoked, which withdraws whatever records are left."""
        name = ns.removeprefix(self.prefix)
        socket = self.rundir / name / "agent.sock"
        if "." in ns or not self.lab.directory:
            return []

        async def drain() -> list[str]:
            async with AgentClient(str(socket)) as agent:
                drained = await agent.drain(self.admin_token())
            return [f"drained {node.kind} {node.tenant}/{node.name} from {ns}" for node in drained]

        async def revoke(client: DirectoryClient) -> list[str]:
            try:
                withdrawn = await client.revoke_server(name)
            except NotFound:
                return []
            return [f"revoked the enrolment of {name} ({len(withdrawn)} records withdrawn)"]

        changes = []
        try:
            if socket.exists():
                changes += asyncio.run(drain())
            changes += self.call_directory(revoke)
        except (NviError, OSError) as error:
            changes.append(f"could not drain {ns} ({error}); its nodes' records stay")
        return changes

    def _remove_member(self, ns: str) -> str:
        """Stop the member's processes (pidfiles first, then whatever else runs in its
        namespace), then delete the namespace and with it every link inside."""
        member_dir = self.rundir / ns.removeprefix(self.prefix)
        for pidfile in sorted(member_dir.glob("*.pid"), reverse=True):
            stop(Daemon(pidfile.stem, ns, (), member_dir, member_dir))
        for pid in links.netns_pids(ns):
            terminate(pid)
        links.remove_netns(ns)
        shutil.rmtree(member_dir, ignore_errors=True)
        return f"removed {ns}"

    # -- status and checks ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        present = set(links.list_netns())
        servers = []
        for server in self.lab.servers:
            ovs = self.ovs(server)
            ns = self.netns(server.name)
            processes = {d.name: running_pid(d) for d in self.daemons(server)}
            bridge = None
            if processes.get("ovsdb-server"):
                try:
                    bridge = self._bridge_config(ovs)
                except NviError:
                    bridge = None
            servers.append(
                {
                    "server": server.name,
                    "cloud": server.cloud,
                    "address": server.address,
                    "locators": server.locators,
                    "namespace": ns if ns in present else None,
                    "uplink": links.link_state(ns, UPLINK) if ns in present else None,
                    "processes": processes,
                    "fail_mode": bridge["fail_mode"] if bridge else None,
                    "datapath": bridge["datapath_type"] if bridge else None,
                    "controller": self.controller_metrics(server)
                    if processes.get("controller")
                    else None,
                }
            )
        others = [
            {
                "member": m.name,
                "kind": kind,
                "namespace": self.netns(m.name) if self.netns(m.name) in present else None,
            }
            for kind, members in (("cloud", self.lab.clouds), ("router", self.lab.routers))
            for m in members
        ]
        if self.lab.directory:
            pid = running_pid(self.directory_daemon())
            others.append(
                {
                    "member": self.lab.directory.name,
                    "kind": f"directory {self.lab.directory.url} "
                    + (f"pid {pid}" if pid else "DOWN"),
                    "namespace": self.netns(self.lab.directory.name)
                    if self.netns(self.lab.directory.name) in present
                    else None,
                }
            )
            engine = running_pid(self.docker_daemon())
            others.append(
                {
                    "member": "docker",
                    "kind": "the agents' Docker engine " + (f"pid {engine}" if engine else "DOWN"),
                    "namespace": None,
                }
            )
        if self.lab.outside:
            pid = running_pid(self.outside_daemon())
            ns = self.netns(self.lab.outside.name)
            others.append(
                {
                    "member": self.lab.outside.name,
                    "kind": f"outside host {self.lab.outside.url} "
                    + (f"pid {pid}" if pid else "DOWN"),
                    "namespace": ns if ns in present else None,
                }
            )
        portal = self.portal_daemon()
        if portal and self.lab.portal:
            pid = running_pid(portal)
            others.append(
                {
                    "member": "portal",
                    "kind": f"the tenants' portal {self.lab.portal.url} "
                    + (f"pid {pid}" if pid else "DOWN"),
                    "namespace": None,
                }
            )
        link = self.access
        return {
            "lab": self.lab.name,
            "logs": str(self.rundir),
            "servers": servers,
            "network": others,
            "access": None
            if link is None
            else {
                "link": link.root_end,
                "state": access.state(link),
                "address": link.root_address,
                "router": link.router,
                "routes": access.routed(link),
            },
            "client_config": str(self.client_config) if self.client_config.exists() else None,
        }

    def controller_stats(self, server: Server) -> dict[str, Any] | None:
        """The counters a server's controller refreshes once a second (None before its first)."""
        try:
            return json.loads((self.rundir / server.name / "controller.stats.json").read_text())
        except (OSError, ValueError):
            return None

    def controller_metrics(self, server: Server) -> dict[str, Any] | None:
        """The controller's main numbers, scraped from its /metrics inside the server's
        namespace, as a Prometheus server on that server would (None if it does not answer)."""
        text = links.http_get_in(self.netns(server.name), CONTROLLER_METRICS)
        return None if text is None else controller_summary(text)

    def check(self) -> list[dict[str, Any]]:
        """Ping every server's underlay address from every other server."""
        results = []
        for source in self.lab.servers:
            for target in self.lab.servers:
                if source is target:
                    continue
                ping = links.run_in(
                    self.netns(source.name),
                    ["ping", "-c", "1", "-W", "2", "-q", target.address],
                    check=False,
                )
                results.append(
                    {
                        "from": source.name,
                        "to": target.name,
                        "address": target.address,
                        "reached": ping.returncode == 0,
                        "route": "same cloud" if source.cloud == target.cloud else "via router",
                    }
                )
        return results

    def exec_argv(self, member: str, command: list[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment to run `command` inside a member's namespace (OVS tools find
        the server's own OVS through OVS_RUNDIR)."""
        if member not in self.lab.member_names():
            raise NviError(f"lab {self.lab.name} has no member {member!r}")
        if self.netns(member) not in links.list_netns():
            raise NviError(f"lab {self.lab.name} is not up ({self.netns(member)} does not exist)")
        env = dict(os.environ)
        if any(s.name == member for s in self.lab.servers):
            env.update(self.ovs(self.lab.server(member)).env)
        return ["ip", "netns", "exec", self.netns(member), *command], env


def controller_summary(text: str) -> dict[str, Any]:
    """What `nvi lab status` shows of a controller's scrape."""
    values = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return {
        "nodes": int(values[("nvi_controller_local_nodes", ())]),
        "pairs": int(values[("nvi_controller_pairs", ())]),
        "packet_in": int(values[("nvi_controller_packet_ins_total", ())]),
        "connected": bool(values[("nvi_controller_switch_connected", ())]),
        "decisions": {
            labels[0]: int(count)
            for (name, labels), count in values.items()
            if name == "nvi_controller_decisions_total"
        },
        "lookups": {
            labels[0]: int(count)
            for (name, labels), count in values.items()
            if name == "nvi_controller_directory_lookups_total"
        },
    }


def _write_if_changed(path: Path, text: str, private: bool = False) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return True


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NviError("the lab creates network namespaces and Open vSwitch instances: run as root")
