"""The agent's pure parts: locator allocation and rows in its sqlite state, the config file
round trip (and that nothing needs libvirt unless VMs are enabled), and the port record the controller reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hostagent.config import AgentConfig, DirectoryConfig, VmConfig, load_config, render_config
from hostagent.errors import Conflict
from hostagent.models import NodeCreate, Phase
from hostagent.ovs import node_port
from hostagent.state import State
from nvi.core.model import parse_pool
from nvi.core.ports import NodePort

POOL = parse_pool("198.51.100.64-198.51.100.66")


def request(name: str, tenant: str = "acme") -> NodeCreate:
    return NodeCreate(
        name=name, tenant=tenant, network="web", image="nvi/busybox", cpus=0.5, memory_mib=64
    )


def test_locators_are_the_lowest_free_skipping_those_held_by_others(tmp_path: Path) -> None:
    state = State(tmp_path / "agent.db")
    first = state.reserve(request("a"), POOL, taken={"198.51.100.64"})
    second = state.reserve(request("b"), POOL, taken={"198.51.100.64"})
    assert (first.locator, second.locator) == ("198.51.100.65", "198.51.100.66")
    assert first.phase == Phase.CREATING
    with pytest.raises(Conflict, match="no free locator"):
        state.reserve(request("c"), POOL, taken={"198.51.100.64"})
    state.delete(first.id)
    assert state.reserve(request("c"), POOL, taken=set()).locator == "198.51.100.64"
    assert state.reserved() == (1.0, 128)


def test_a_name_is_unique_per_tenant_and_the_agent_id_survives_reopening(tmp_path: Path) -> None:
    state = State(tmp_path / "agent.db")
    state.reserve(request("db"), POOL, taken=set())
    state.reserve(request("db", tenant="rival"), POOL, taken=set())
    with pytest.raises(Conflict, match="already exists"):
        state.reserve(request("db"), POOL, taken=set())
    agent_id = state.agent_id
    state.close()
    again = State(tmp_path / "agent.db")
    assert again.agent_id == agent_id and len(again.nodes()) == 2
    assert (tmp_path / "agent.db").stat().st_mode & 0o777 == 0o600


def test_port_record_is_what_the_controller_reads(tmp_path: Path) -> None:
    state = State(tmp_path / "agent.db")
    node = state.reserve(request("web1"), POOL, taken=set())
    node = state.update(
        node.id,
        directory_id="n-1",
        ip="10.1.0.2",
        mac="52:54:00:aa:bb:cc",
        gateway="10.1.0.1",
        prefixlen=24,
    )
    ids = node_port(node).external_ids()
    assert NodePort.from_external_ids(ids) == node_port(node)
    assert (ids["nvi-cidr"], ids["nvi-locator"], ids["nvi-node-id"]) == (
        "10.1.0.0/24",
        "198.51.100.64",
        "n-1",
    )


def test_config_file_round_trip(tmp_path: Path) -> None:
    config = AgentConfig(
        name="s1",
        underlay="198.51.100.11",
        locators="198.51.100.64/27",
        state_dir=tmp_path / "state",
        socket=tmp_path / "agent.sock",
        directory=DirectoryConfig(
            url="http://198.51.100.2:7480", credential_file=tmp_path / "server.token"
        ),
        vm=VmConfig(enabled=True, owner="lab-s1", guest_cache=tmp_path / "guest"),
    )
    path = tmp_path / "agent.toml"
    path.write_text(render_config(config))
    assert load_config(path) == config
    path.write_text(render_config(config.model_copy(update={"vm": VmConfig()})))
    assert load_config(path).vm.enabled is False, "VMs are off unless the config says so"


def test_the_agent_and_the_lab_load_without_libvirt() -> None:
    """A server without the VM stack runs containers: nothing imports libvirt unless
    `[vm] enabled` (here the import is made to fail, as on a machine without it)."""
    code = (
        "import sys; sys.modules['libvirt'] = None\n"
        "import hostagent.service, nvi.lab.agents, nvi.lab.net\n"
        "assert sys.modules['libvirt'] is None\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    blocked = "import sys; sys.modules['libvirt'] = None; import hostagent.vmnode"
    assert subprocess.run([sys.executable, "-c", blocked], capture_output=True).returncode != 0
