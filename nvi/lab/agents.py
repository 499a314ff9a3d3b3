"""How a lab runs host agents: one Docker engine for the whole lab, in the machine's root
namespaces, and one agent per server (a `Daemon` inside the server's namespace, supervised
like its OVS: pidfile with start time, readiness path, own log).

An agent's config is made from the server's own lab entry and the directory URL only, so it
never names another server. Each agent also serves HTTPS on its server's underlay address
(port 7490, a certificate from the lab's CA) and announces that URL, with its server's cloud,
in the directory's catalogue, so that users (through the access link) can reach it. The
agents share the engine: every container carries its agent's id, and the lab's containers
also carry `nvi.lab=<lab>`.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

from hostagent.config import (
    LIBVIRT_SOCKET,
    LIBVIRTD_PIDFILE,
    AgentConfig,
    CatalogueConfig,
    DirectoryConfig,
    DockerConfig,
    OvsConfig,
    TcpConfig,
    VmConfig,
    render_config,
)
from hostagent.guest import cached_guest
from nvi.core.config import write_secret
from nvi.core.tls import KeyPair, ensure_certificate
from nvi.core.tokens import new_token, token_hash
from nvi.lab.ovs import BRIDGE, OvsInstance
from nvi.lab.process import Daemon
from nvi.lab.spec import Server

LAB_LABEL = "nvi.lab"
SERVER_TOKEN = "server.token"
"""A lab server's credential from its enrolment, beside its configs in its run directory."""
OPERATOR_TOKEN = "agent-operator.token"
"""The operator token of a lab agent's HTTPS endpoint (mode 0600), beside its config."""
AGENT_PORT = 7490


def agent_url(server: Server) -> str:
    """Where users reach a lab server's agent: its underlay address."""
    return f"https://{server.address}:{AGENT_PORT}"


def ensure_agent_tls(ca: KeyPair, server: Server, rundir: Path) -> tuple[TcpConfig, bool]:
    """The agent's HTTPS endpoint on its server's underlay address, with a certificate of the
    lab's CA naming that address and an operator token of its own; (config, whether the
    certificate was (re)issued: a running agent must then restart to use it)."""
    token_file = rundir / OPERATOR_TOKEN
    if not token_file.exists():
        rundir.mkdir(parents=True, exist_ok=True)
        write_secret(token_file, new_token())
    files, issued = ensure_certificate(ca, rundir, "agent", [server.address])
    tcp = TcpConfig(
        host=server.address,
        port=AGENT_PORT,
        token_sha256=[token_hash(token_file.read_text().strip())],
        cert_file=files.cert_file,
        key_file=files.key_file,
    )
    return tcp, issued


def vm_stack_available() -> bool:
    """Whether this machine can run VMs: libvirtd up, libvirt-python and the guest installed
    (what scripts/setup-vm does; the lab never installs them itself)."""
    return (
        LIBVIRTD_PIDFILE.exists()
        and _accepts_connections(LIBVIRT_SOCKET)
        and importlib.util.find_spec("libvirt") is not None
        and cached_guest() is not None
    )


def _accepts_connections(path: Path) -> bool:
    """A socket file outlives its daemon (a reboot, a kill): only a connection proves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def lab_vm_owner(lab: str, server: Server) -> str:
    """A lab agent's VMs are `nvi-<lab>-<server>-<node id>`: `down` finds them by the lab."""
    return f"{lab}-{server.name}"


def remove_lab_vms(lab: str) -> list[str]:
    """Every VM of the lab's agents (the agents are gone by then; libvirt is the machine's)."""
    if not vm_stack_available():
        return []
    from hostagent.vm import remove_owners  # needs libvirt-python

    return remove_owners(f"{lab}-")


def agent_config(
    server: Server,
    ovs: OvsInstance,
    directory_url: str,
    docker_url: str,
    labels: dict[str, str] | None = None,
    vm: VmConfig | None = None,
    ca_file: Path | None = None,
    tcp: TcpConfig | None = None,
    catalogue: CatalogueConfig | None = None,
) -> AgentConfig:
    """The config of the agent of one lab server; its state lives in the server's run dir;
    `ca_file` is the CA of the directory's certificate (the lab's)."""
    return AgentConfig(
        name=server.name,
        underlay=server.address,
        locators=server.locators,
        floating=server.floating,
        bridge=BRIDGE,
        state_dir=ovs.rundir / "agent",
        socket=ovs.rundir / "agent.sock",
        ovs=OvsConfig(db=f"unix:{ovs.db_socket}"),
        docker=DockerConfig(url=docker_url, labels=labels or {}),
        vm=vm or VmConfig(),
        directory=DirectoryConfig(
            url=directory_url, credential_file=ovs.rundir / SERVER_TOKEN, ca_file=ca_file
        ),
        tcp=tcp,
        catalogue=catalogue,
    )


def agent_daemon(config: AgentConfig, netns: str, rundir: Path) -> Daemon:
    """The agent process of a server (config in `rundir/agent.toml`, see `write_config`);
    ready once its socket exists, which it creates only after reconciling."""
    return Daemon(
        name="agent",
        netns=netns,
        argv=(sys.executable, "-m", "nvi", "agent", "serve", "--config", f"{rundir}/agent.toml"),
        rundir=rundir,
        ready=config.socket,
    )


def write_config(config: AgentConfig, rundir: Path) -> bool:
    """Write `rundir/agent.toml`; whether it changed (a running agent read the old one)."""
    rundir.mkdir(parents=True, exist_ok=True)
    path, text = rundir / "agent.toml", render_config(config)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def lab_agent(
    lab: str,
    server: Server,
    ovs: OvsInstance,
    directory_url: str,
    netns: str,
    ca_file: Path,
    tcp: TcpConfig | None = None,
) -> tuple[AgentConfig, Daemon]:
    """The agent of a lab server, using the lab's Docker engine, and VMs if the machine has
    the VM stack (scripts/setup-vm); otherwise containers only. With `tcp` (from
    `ensure_agent_tls`) it serves HTTPS there and announces itself in the catalogue."""
    exec_root = lab_docker_root(lab) / "exec"
    vm = VmConfig(enabled=True, owner=lab_vm_owner(lab, server)) if vm_stack_available() else None
    labels = {LAB_LABEL: lab}
    catalogue = CatalogueConfig(agent_url=agent_url(server), cloud=server.cloud) if tcp else None
    config = agent_config(
        server, ovs, directory_url, docker_url(exec_root), labels, vm, ca_file, tcp, catalogue
    )
    return config, agent_daemon(config, netns, ovs.rundir)


def lab_docker_root(lab: str) -> Path:
    """Everything of the lab's engine: its pidfile and log, data and exec roots. Outside the
    lab's run directory, so that `down` finds the engine even when that directory is lost
    (named after the lab: the tag), and short whatever the run directory is, since
    containerd's socket under the exec root must fit a Unix socket path (107 bytes)."""
    return Path("/run") / f"nvi-docker-{lab}"


def lab_dockerd(lab: str, launch_netns: str) -> Daemon:
    """The lab's Docker engine. Started from one of the lab's namespaces (a `Daemon` runs under
    `ip netns exec`), it at once re-enters the network and mount namespaces of the process
    bringing the lab up (the machine's own; pid 1's may be out of reach in a sandbox): dockerd
    needs the real cgroup mounts, which `ip netns exec`'s private /sys hides."""
    root = lab_docker_root(lab)
    home = f"/proc/{os.getpid()}/ns"
    return Daemon(
        name="dockerd",
        netns=launch_netns,
        argv=(
            "nsenter",
            f"--net={home}/net",
            f"--mount={home}/mnt",
            *dockerd_argv(root / "data", root / "exec"),
        ),
        rundir=root,
        ready=root / "exec" / "docker.sock",
    )


def dockerd_argv(data_root: Path, exec_root: Path) -> list[str]:
    """A Docker engine of its own: own socket, data and exec roots, no Docker networking at
    all (nodes get their interface from the agent). It must run in the machine's root
    namespaces: under `ip netns exec` it finds no cgroup mount. `exec_root` must be short
    (see `lab_docker_root`)."""
    return [
        "dockerd",
        f"--host={docker_url(exec_root)}",
        f"--data-root={data_root}",
        f"--exec-root={exec_root}",
        f"--pidfile={exec_root / 'engine.pid'}",
        "--shutdown-timeout=5",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
    ]


def docker_url(exec_root: Path) -> str:
    return f"unix://{exec_root / 'docker.sock'}"
