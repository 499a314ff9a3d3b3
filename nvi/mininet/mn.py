"""NVI the Mininet way: what `mn --custom examples/mininet/nvi_custom.py` loads.

    mn --custom examples/mininet/nvi_custom.py --topo nvi,3 --switch nvi --host nvi --controller nvi

`--controller nvi` is NVI's side of the network: a directory, and one `nvi controller serve` per
server switch, which that switch alone connects to (Mininet would connect every switch to every
controller). Unlike `nvi.mininet.net`, this runs where `mn` runs: the machine's namespace and its
Open vSwitch, and `mn`'s own exit path (which calls Mininet's machine-wide cleanup on an error).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mininet.node import Controller, Node, OVSSwitch

from federation.client import DirectoryClient
from nvi.core.config import write_secret
from nvi.core.errors import NviError
from nvi.core.model import parse_pool
from nvi.core.ports import NodePort, vsctl_set_args
from nvi.lab import process
from nvi.lab.agents import SERVER_TOKEN
from nvi.mininet.net import DIRECTORY_PORT, NviHost, controller_daemon, start_directory
from nvi.mininet.topo import SEGMENT, SERVER, UPLINK_PORT, NviTopo


class NviServers(NviTopo):
    """`--topo nvi,N`: N servers on one segment; tenants red and blue have a node on each server,
    at the same addresses (10.0.0.(10+i))."""

    def build(self, servers: int = 3) -> None:
        self.addSegment("u1", "198.51.100.0/24")
        self.nodeInfo("u1")["dpid"] = "ff01"  # not s1's (Mininet takes a dpid from the digits)
        for tenant in ("red", "blue"):
            self.addTenant(tenant, {"net": "10.0.0.0/24"})
        for i in range(1, servers + 1):
            pool = f"198.51.100.{96 + 4 * i}-198.51.100.{99 + 4 * i}"
            self.addServer(f"s{i}", "u1", f"198.51.100.{10 + i}", pool)
            self.addTenantNode(f"r{i}", "red", "net", f"10.0.0.{10 + i}", f"s{i}")
            self.addTenantNode(f"b{i}", "blue", "net", f"10.0.0.{10 + i}", f"s{i}")
        for server in self.members(SERVER):
            self.nodeInfo(server)["routes"] = self.routes(server)
        for name in self.nodes():
            info = self.nodeInfo(name)
            if "tenant" in info:  # mn gives hosts no prefix of their own: the network's
                info["cidr"] = self.tenants[info["tenant"]][info["network"]]
                info["ip"] += "/" + info["cidr"].split("/")[1]


# `mn` gives every switch a passive OpenFlow port from 6654 up (`--listenport`, for `dpctl`), in
# the same namespace as the controllers: theirs must lie elsewhere.
FIRST_CONTROLLER_PORT = 16653
FIRST_METRICS_PORT = 19653


@dataclass(frozen=True)
class ServerController:
    """Where one server switch finds its own controller: all `OVSSwitch.start` reads of a
    controller. Not a Mininet node (no shell): its process is `NviFederation`'s."""

    name: str
    port: int
    protocol: str = "tcp"

    def IP(self) -> str:  # noqa: N802 - Mininet's name
        return "127.0.0.1"


class NviFederation(Controller):
    """`--controller nvi`: the directory, and a controller per server switch."""

    def __init__(self, name: str, **params: Any) -> None:
        self.rundir = Path(os.environ.get("NVI_RUN_DIR", "/run/nvi")) / "mn" / str(os.getpid())
        self.servers: dict[str, ServerController] = {}
        self.daemons: list[process.Daemon] = []
        self.admin = ""
        self.tenant_tokens: dict[str, str] = {}
        self.gateways: dict[tuple[str, str], str] = {}
        super().__init__(name, ip="127.0.0.1", port=DIRECTORY_PORT, **params)

    def checkListening(self) -> None:
        """Its port is the directory's, started below."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{DIRECTORY_PORT}"

    @property
    def ca_file(self) -> Path:
        return self.rundir / "directory" / "ca.crt"

    def start(self) -> None:
        """The directory, in the namespace `mn` runs in (this thread's)."""
        if self.rundir.exists():
            raise NviError(f"{self.rundir} exists: another run of this process?")
        folder = self.rundir / "directory"
        self.daemons.append(_directory_daemon(folder))
        start_directory(folder, "")
        self.admin = (folder / "admin.token").read_text().strip()

    def serve(self, switch: NviServerSwitch) -> ServerController:
        """Enroll the switch's server, publish its nodes, start its own controller."""
        index = len(self.servers)
        folder = self.rundir / switch.name
        folder.mkdir(parents=True)
        switch.node_ports = asyncio.run(self._publish(switch, folder))
        daemon, port = controller_daemon(
            folder,
            "",
            address=switch.facts["address"],
            directory_url=self.url,
            ca_file=self.ca_file,
            ovsdb=f"unix:{os.environ.get('OVS_RUNDIR', '/var/run/openvswitch')}/db.sock",
            port=FIRST_CONTROLLER_PORT + index,
            metrics_port=FIRST_METRICS_PORT + index,
            uplink=switch.intfs[UPLINK_PORT].name,
            routes=switch.facts["routes"],
        )
        self.daemons.append(daemon)
        process.ensure_running(daemon, timeout=60)
        self.servers[switch.name] = ServerController(f"c{switch.name}", port)
        return self.servers[switch.name]

    async def _publish(self, switch: NviServerSwitch, folder: Path) -> dict[str, NodePort]:
        pool = iter(parse_pool(switch.facts["locators"]))
        async with DirectoryClient(self.url, self.admin, ca_file=self.ca_file) as admin:
            enrolled = await admin.enroll_server(switch.name, [switch.facts["locators"]])
            write_secret(folder / SERVER_TOKEN, enrolled.token)
            ports = {}
            for port, intf in switch.intfs.items():
                if port == UPLINK_PORT or intf.link is None:
                    continue
                host = intf.link.intf2.node if intf.link.intf1 is intf else intf.link.intf1.node
                facts = host.params
                tenant, network = facts["tenant"], facts["network"]
                if tenant not in self.tenant_tokens:
                    await admin.create_tenant(tenant)
                    token = await admin.create_token(tenant, "mininet nodes")
                    self.tenant_tokens[tenant] = token.token
                if (tenant, network) not in self.gateways:
                    created = await admin.create_network(tenant, network, facts["cidr"])
                    self.gateways[tenant, network] = created.gateway
                async with DirectoryClient(
                    self.url,
                    enrolled.token,
                    tenant_token=self.tenant_tokens[tenant],
                    ca_file=self.ca_file,
                ) as server:
                    record = await server.create_node(
                        tenant,
                        host.name,
                        kind="container",
                        network=network,
                        ip=host.IP(),
                        mac=host.MAC(),
                        locator=str(next(pool)),
                    )
                gateway = self.gateways[tenant, network]
                host.cmd(f"ip route replace default via {gateway}")
                ports[intf.name] = NodePort(
                    node_id=record.id,
                    tenant=tenant,
                    network=network,
                    ip=record.ip,
                    cidr=facts["cidr"],
                    gateway=gateway,
                    locator=record.locator,
                    mac=record.mac,
                )
        return ports

    def stop(self, *args: Any, **kwargs: Any) -> None:
        """Its own processes, by pidfile; then its shell; then its files."""
        for daemon in reversed(self.daemons):
            process.stop(daemon)
        Node.stop(self, *args, **kwargs)
        shutil.rmtree(self.rundir, ignore_errors=True)


def _directory_daemon(folder: Path) -> process.Daemon:
    """What `start_directory` runs, for stopping it by its pidfile (only name and rundir count)."""
    return process.Daemon("directory", "", (), folder, folder)


class NviServerSwitch(OVSSwitch):
    """`--switch nvi`: a server is a fail-secure OpenFlow 1.3 bridge on the userspace datapath,
    connected only to its own controller; a segment is a plain learning bridge."""

    def __init__(self, name: str, role: str = SEGMENT, **params: Any) -> None:
        keys = ("segment", "address", "locators", "routes", "subnet")
        self.facts = {key: params.pop(key) for key in keys if key in params}
        self.role = role
        self.node_ports: dict[str, NodePort] = {}
        fail_mode = "secure" if role == SERVER else "standalone"
        super().__init__(
            name, failMode=fail_mode, datapath="user", protocols="OpenFlow13", **params
        )

    def start(self, controllers: list[Any]) -> None:
        if self.role != SERVER:
            super().start([])
            return
        federation = next(c for c in controllers if isinstance(c, NviFederation))
        super().start([federation.serve(self)])

    def intfOpts(self, intf: Any) -> str:
        port = self.node_ports.get(intf.name)
        ids = vsctl_set_args(port.external_ids()) if port else []
        return super().intfOpts(intf) + "".join(" " + shlex.quote(arg) for arg in ids)


topos = {"nvi": NviServers}
switches = {"nvi": NviServerSwitch}
hosts = {"nvi": NviHost}
controllers = {"nvi": NviFederation}
