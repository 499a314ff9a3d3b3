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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mininet.node import Controller, OVSSwitch

from federation.client import DirectoryClient
from nvi.core.config import write_secret
from nvi.core.errors import NviError
from nvi.core.model import parse_pool
from nvi.core.ports import NodePort, vsctl_set_args
from nvi.lab.agents import SERVER_TOKEN
from nvi.mininet.net import DIRECTORY_PORT, FIRST_CONTROLLER_PORT, FIRST_METRICS_PORT, NviHost
from nvi.mininet.topo import SEGMENT, SERVER, UPLINK_PORT, NviTopo


class NviServers(NviTopo):
    """`--topo nvi,N`: N servers on one segment; tenants red and blue have a node on each server,
    at the same addresses (10.0.0.(10+i))."""

    def build(self, servers: int = 3) -> None:
        self.addSegment("u1", "198.51.100.0/24")
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


class ServerController(Controller):
    """One server's `nvi controller serve`, started by `NviFederation.serve`."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(name, ip="127.0.0.1", port=port)

    def checkListening(self) -> None:
        """Started later, by the federation (Mininet's check needs telnet)."""

    def start(self) -> None:
        """Already running."""


class NviFederation(Controller):
    """`--controller nvi`: the directory, and a controller per server switch."""

    def __init__(self, name: str, **params: Any) -> None:
        self.rundir = Path(os.environ.get("NVI_RUN_DIR", "/run/nvi")) / "mn" / str(os.getpid())
        self.servers: dict[str, ServerController] = {}
        self.pids: list[int] = []
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
        folder = self.rundir / "directory"
        subprocess.run(
            [sys.executable, "-m", "nvi", "directory", "init", str(folder)]
            + ["--host", "127.0.0.1", "--port", str(DIRECTORY_PORT), "-o", "json"],
            check=True,
            capture_output=True,
        )
        self._spawn(("directory", "serve", "--config", str(folder / "directory.toml")), folder)
        self.admin = (folder / "admin.token").read_text().strip()
        deadline = time.monotonic() + 30
        while self.cmd(f"bash -c 'echo > /dev/tcp/127.0.0.1/{DIRECTORY_PORT}' 2>&1"):
            if time.monotonic() > deadline:
                raise NviError(f"the directory did not start: {folder}/directory.log")
            time.sleep(0.2)

    def _spawn(self, argv: tuple[str, ...], folder: Path) -> None:
        log = folder / f"{argv[0]}.log"
        self.cmd(f"{sys.executable} -m nvi {' '.join(argv)} >{log} 2>&1 &")
        self.pids.append(self.lastPid)

    def serve(self, switch: NviServerSwitch) -> ServerController:
        """Enroll the switch's server, publish its nodes, start its own controller."""
        index = len(self.servers)
        folder = self.rundir / switch.name
        folder.mkdir(parents=True)
        switch.node_ports = asyncio.run(self._publish(switch, folder))
        port = FIRST_CONTROLLER_PORT + index
        routes = "".join(
            f'\n[[routes]]\nprefix = "{prefix}"\n' + (f'via = "{via}"\n' if via else "")
            for prefix, via in switch.facts["routes"]
        )
        (folder / "controller.toml").write_text(
            f'address = "{switch.facts["address"]}"\n'
            f'directory = "{self.url}"\n'
            f'token_file = "{SERVER_TOKEN}"\n'
            f'ca_file = "{self.ca_file}"\n'
            f'ovsdb = "unix:{os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")}/db.sock"\n'
            f"listen_port = {port}\n"
            f"metrics_port = {FIRST_METRICS_PORT + index}\n"
            f'uplink = "{switch.intfs[UPLINK_PORT].name}"\n' + routes
        )
        self._spawn(("controller", "serve", "--config", str(folder / "controller.toml")), folder)
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
        for pid in self.pids:
            self.cmd(f"kill {pid}")
        super().stop(*args, **kwargs)
        shutil.rmtree(self.rundir, ignore_errors=True)


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

    def start(self, controllers: list[Controller]) -> None:
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
