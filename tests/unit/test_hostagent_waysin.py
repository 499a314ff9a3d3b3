"""A node's ways in on one server, without root: the floating pool in the config, the state
columns (and an older state file gaining them), the conflict rules, the order of the agent's
steps with a fake directory and switch (and what a failure undoes), and the CLI's parsing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import netaddr
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from federation.errors import FloatingTaken as DirectoryFloatingTaken
from hostagent import waysin
from hostagent.agent import Agent
from hostagent.config import AgentConfig, DirectoryConfig, TcpConfig, load_config, render_config
from hostagent.errors import Unauthorized
from hostagent.metrics import AgentMetrics
from hostagent.models import MAX_PUBLISHED, NodeCreate, NodeInfo, Phase, Publish
from hostagent.ovs import node_port
from hostagent.state import State
from hostagent.waysin import (
    FloatingAttached,
    FloatingExhausted,
    FloatingOutside,
    FloatingTaken,
    NoFloatingPool,
    PortInUse,
    check_published,
    choose_floating,
    listening,
)
from nvi.cli import main
from nvi.core.model import Network, NodeKind, PublishedPort
from nvi.core.ports import FLOATING, PUBLISH

LOCATORS = "198.51.100.64-198.51.100.66"
FLOATING_POOL = "203.0.113.10-203.0.113.11"
P = PublishedPort.parse


def config(tmp_path: Path, **values: Any) -> AgentConfig:
    fields: dict[str, Any] = dict(
        name="s1",
        underlay="198.51.100.11",
        locators=LOCATORS,
        floating=FLOATING_POOL,
        state_dir=tmp_path / "state",
        socket=tmp_path / "agent.sock",
        directory=DirectoryConfig(url="https://192.0.2.2:7480", credential_file=tmp_path / "t"),
    )
    return AgentConfig(**(fields | values))


# -- config -------------------------------------------------------------------------------


def test_the_floating_pool_round_trips_and_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(render_config(config(tmp_path)))
    loaded = load_config(path)
    assert loaded.floating == FLOATING_POOL and loaded.floating_pool is not None
    assert loaded.floating_pool.size == 2
    assert config(tmp_path, floating=None).floating_pool is None


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ("198.51.100.66-198.51.100.70", "overlaps the locators"),
        ("198.51.100.0/24", "overlaps the locators"),
        ("198.51.100.8/29", "holds the server's own address"),
        ("2001:db8::/64", "not an IPv4 pool"),
        ("not-a-pool", "not a CIDR"),
    ],
)
def test_a_floating_pool_clashing_with_the_server_is_refused(
    tmp_path: Path, pool: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        config(tmp_path, floating=pool)


# -- state --------------------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    network TEXT NOT NULL, image TEXT NOT NULL, cpus REAL NOT NULL, memory_mib INTEGER NOT NULL,
    locator TEXT NOT NULL UNIQUE, ip TEXT, mac TEXT, gateway TEXT, prefixlen INTEGER,
    directory_id TEXT, phase TEXT NOT NULL, desired TEXT NOT NULL, created REAL NOT NULL,
    UNIQUE (tenant, name)
);
INSERT INTO nodes VALUES ('abc', 'acme', 'old', 'container', 'web', 'nvi/busybox', 1, 64,
    '198.51.100.64', '10.1.0.2', '52:54:00:aa:bb:cc', '10.1.0.1', 24, 'n-1', 'ready',
    'running', 0);
"""


def test_a_state_file_from_before_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.close()
    state = State(path)
    (node,) = state.nodes()
    assert (node.name, node.floating, node.published) == ("old", None, [])
    state.update(node.id, floating="203.0.113.10", published="8080:80/tcp")
    state.close()
    again = State(path)  # the columns exist now: opening again adds nothing, loses nothing
    node = again.get("abc")
    assert (node.floating, node.published) == ("203.0.113.10", [P("8080:80/tcp")])
    assert again.floating() == {"203.0.113.10"}
    assert again.published() == {(8080, "tcp"): "abc"}


def test_a_floating_address_is_one_nodes_in_the_state(tmp_path: Path) -> None:
    state = State(tmp_path / "agent.db")
    pool = netaddr.IPRange("198.51.100.64", "198.51.100.66")
    a = state.reserve(request("a", publish=[P("8080:80")]), pool, set())
    b = state.reserve(request("b"), pool, set())
    assert a.published == [P("8080:80/tcp")] and b.published == []
    state.update(a.id, floating="203.0.113.10")
    with pytest.raises(sqlite3.IntegrityError):
        state.update(b.id, floating="203.0.113.10")


def request(name: str, **values: Any) -> NodeCreate:
    return NodeCreate(name=name, tenant="acme", network="web", image="nvi/busybox", **values)


# -- rules --------------------------------------------------------------------------------


def test_a_host_port_is_one_nodes_and_never_the_servers() -> None:
    held = {(8080, "tcp"): "a"}
    check_published("a", [P("8080:81/tcp")], held, set())  # its own: it may change the target
    check_published("b", [P("8080:80/udp")], held, set())  # another protocol is another port
    with pytest.raises(PortInUse, match="another node") as refused:
        check_published("b", [P("8080:80/tcp")], held, set())
    assert refused.value.code == "port_in_use" and refused.value.status == 409
    with pytest.raises(PortInUse, match="server itself"):
        check_published("b", [P("22:22/tcp")], held, {(22, "tcp")})


def test_a_host_port_of_the_servers_own_connections_is_refused() -> None:
    """Replies to the server's own connections (to the directory, among others) come to its
    address on a port of its source range: published, they would reach a tenant's node."""
    ephemeral = range(32768, 61000)
    for host_port in (32768, 40000, 60999):
        with pytest.raises(PortInUse, match="source ports \\(32768-60999\\)") as refused:
            check_published("a", [P(f"{host_port}:80/udp")], {}, set(), ephemeral)
        assert refused.value.code == "port_in_use"
    check_published("a", [P("32767:80/tcp")], {}, set(), ephemeral)


def test_the_servers_source_ports_are_its_namespaces_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("20000\t29999\n")
    monkeypatch.setattr(waysin, "LOCAL_PORT_RANGE", proc)
    assert waysin.server_ephemeral_ports() == range(20000, 30000)


def test_a_request_naming_a_host_port_twice_is_invalid() -> None:
    with pytest.raises(ValidationError, match="published twice"):
        Publish.model_validate({"publish": [P("80:80"), P("80:81")]})
    Publish.model_validate({"publish": [P("80:80/tcp"), P("80:80/udp")]})
    too_many = [P(f"{1000 + i}:80") for i in range(MAX_PUBLISHED + 1)]
    with pytest.raises(ValidationError):
        request("a", publish=too_many)
    with pytest.raises(ValidationError, match="below|less than"):
        Publish.model_validate({"publish": [{"host_port": 61000, "node_port": 80}]})


def test_the_floating_address_chosen() -> None:
    pool = netaddr.IPRange("203.0.113.10", "203.0.113.11")
    assert choose_floating(pool, set(), None) == "203.0.113.10"
    assert choose_floating(pool, {"203.0.113.10"}, None) == "203.0.113.11"
    assert choose_floating(pool, set(), "203.0.113.11") == "203.0.113.11"
    for held, wanted, refusal in [
        ({"203.0.113.10", "203.0.113.11"}, None, FloatingExhausted),
        ({"203.0.113.11"}, "203.0.113.11", FloatingTaken),
        (set(), "203.0.113.12", FloatingOutside),
    ]:
        with pytest.raises(refusal):
            choose_floating(pool, held, wanted)
    with pytest.raises(NoFloatingPool):
        choose_floating(None, set(), None)


PROC_TCP = """  sl  local_address rem_address   st tx_queue rx_queue
   0: 00000000:0016 00000000:0000 0A 00000000:00000000
   1: 0B6433C6:1F90 00000000:0000 0A 00000000:00000000
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000
   3: 0B6433C6:1F92 0A6433C6:E616 01 00000000:00000000
"""
PROC_UDP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 0
"""


def test_the_servers_own_ports_are_its_listening_sockets_on_its_address() -> None:
    """Bound to every address or to the server's (198.51.100.11): yes; to loopback, or a
    connection rather than a listener: no."""
    found = listening({"tcp": PROC_TCP, "udp6": PROC_UDP6}, "198.51.100.11")
    assert found == {(22, "tcp"), (8080, "tcp"), (53, "udp")}


def test_the_port_carries_the_ways_in_only_when_set(tmp_path: Path) -> None:
    node = ready_node(State(tmp_path / "agent.db"), "web1")
    assert FLOATING not in node_port(node).external_ids()
    assert PUBLISH not in node_port(node).external_ids()
    node = node.model_copy(
        update={"floating": "203.0.113.10", "published": [P("8080:80"), P("53:53/udp")]}
    )
    ids = node_port(node).external_ids()
    assert (ids[FLOATING], ids[PUBLISH]) == ("203.0.113.10", "8080:80/tcp,53:53/udp")


# -- the agent's order of steps (fake directory, switch and driver) ---------------------------


class Healthy:
    async def health(self) -> str:
        return "ok"


class FakeDriver(Healthy):
    kind = NodeKind.CONTAINER
    default_image = "nvi/busybox"

    def check(self, request: NodeCreate) -> None:
        pass

    async def state(self, node: NodeInfo) -> str:
        return "running"

    async def booted(self, node: NodeInfo) -> tuple[bool, str]:
        return True, ""


class FakeSwitch(Healthy):
    """The keys of each port, as `sync` leaves them; `fail` makes the next sync fail."""

    def __init__(self, log: list[str]) -> None:
        self.ports: dict[str, dict[str, str]] = {}
        self.log = log
        self.fail = False

    async def sync(self, node: NodeInfo) -> bool:
        if self.fail:
            self.fail = False
            raise OSError("switch down")
        self.log.append(f"switch floating={node.floating}")
        self.ports[node.port] = node_port(node).external_ids()
        return True


class FakeDirectory(Healthy):
    def __init__(self, log: list[str]) -> None:
        self.floating: dict[str, str] = {}
        self.log = log
        self.taken: set[str] = set()

    async def network(self, token: str, tenant: str, network: str) -> Network:
        if token != f"{tenant}-token":
            error = DirectoryFloatingTaken("no")  # any 4xx directory error with a status
            error.status = 401
            raise error
        return Network(tenant=tenant, name=network, cidr="10.1.0.0/24", gateway="10.1.0.1")

    async def attach_floating(self, token: str, tenant: str, name: str, address: str) -> Any:
        if address in self.taken:
            error = DirectoryFloatingTaken(f"{address} is attached elsewhere")
            error.status, error.code = 409, "floating_taken"
            raise error
        self.log.append(f"directory attach {address}")
        self.floating[f"{tenant}/{name}"] = address

    async def detach_floating(self, tenant: str, name: str) -> None:
        self.log.append("directory detach")
        self.floating.pop(f"{tenant}/{name}", None)


def ready_node(state: State, name: str, **values: Any) -> NodeInfo:
    pool = netaddr.IPRange("198.51.100.64", "198.51.100.66")
    node = state.reserve(request(name, **values), pool, set())
    return state.update(
        node.id,
        phase=Phase.READY,
        directory_id=f"n-{name}",
        ip="10.1.0.2",
        mac="52:54:00:aa:bb:cc",
        gateway="10.1.0.1",
        prefixlen=24,
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Agent, list[str]]:
    log: list[str] = []
    tcp = TcpConfig(
        port=7490, token_sha256=["0" * 64], cert_file=tmp_path / "c", key_file=tmp_path / "k"
    )
    agent = Agent(
        config(tmp_path, tcp=tcp),
        State(tmp_path / "agent.db"),
        [FakeDriver()],  # type: ignore[list-item]
        FakeSwitch(log),  # type: ignore[arg-type]
        FakeDirectory(log),  # type: ignore[arg-type]
        AgentMetrics(),
    )
    return agent, log


def everything(agent: Agent) -> tuple[Any, ...]:
    return (
        agent.state.nodes(),
        dict(agent.switch.ports),  # type: ignore[attr-defined]
        dict(agent.publisher.floating),  # type: ignore[attr-defined]
    )


async def test_publishing_replaces_the_list_and_a_conflict_changes_nothing(
    setup: tuple[Agent, list[str]],
) -> None:
    agent, _ = setup
    ready_node(agent.state, "a", publish=[P("8080:80")])
    ready_node(agent.state, "b")
    node = await agent.publish("acme", "b", [P("9090:90"), P("53:53/udp")], "acme-token")
    assert node.published == [P("9090:90/tcp"), P("53:53/udp")]
    assert agent.switch.ports[node.port][PUBLISH] == "9090:90/tcp,53:53/udp"  # type: ignore[attr-defined]
    before = everything(agent)
    for ports in ([P("8080:80")], [P("7490:80")], [P("9090:90"), P("8080:81")]):
        with pytest.raises(PortInUse):
            await agent.publish("acme", "b", ports, "acme-token")
        assert everything(agent) == before
    with pytest.raises(Unauthorized):
        await agent.publish("acme", "b", [], "rival-token")
    assert everything(agent) == before
    cleared = await agent.publish("acme", "b", [], "acme-token")
    assert cleared.published == [] and PUBLISH not in agent.switch.ports[node.port]  # type: ignore[attr-defined]


async def test_a_create_publishing_a_held_port_is_refused_before_anything_is_made(
    setup: tuple[Agent, list[str]],
) -> None:
    agent, log = setup
    ready_node(agent.state, "a", publish=[P("8080:80")])
    with pytest.raises(PortInUse):
        await agent.create(request("b", publish=[P("8080:80")]), "acme-token")
    assert [node.name for node in agent.state.nodes()] == ["a"] and log == []


async def test_floating_attach_goes_directory_state_port_and_detach_the_other_way(
    setup: tuple[Agent, list[str]],
) -> None:
    agent, log = setup
    ready_node(agent.state, "a")
    node = await agent.attach_floating("acme", "a", None, "acme-token")
    assert node.floating == "203.0.113.10"
    assert log == ["directory attach 203.0.113.10", "switch floating=203.0.113.10"]
    assert agent.switch.ports[node.port][FLOATING] == "203.0.113.10"  # type: ignore[attr-defined]
    again = await agent.attach_floating("acme", "a", "203.0.113.10", "acme-token")
    assert again.floating == "203.0.113.10" and len(log) == 2, "the same address: no change"
    with pytest.raises(FloatingAttached):
        await agent.attach_floating("acme", "a", "203.0.113.11", "acme-token")
    log.clear()
    node = await agent.detach_floating("acme", "a", "acme-token")
    assert node.floating is None and log == ["switch floating=None", "directory detach"]
    assert FLOATING not in agent.switch.ports[node.port]  # type: ignore[attr-defined]
    log.clear()
    await agent.detach_floating("acme", "a", "acme-token")
    assert log == [], "nothing attached: nothing to do"


async def test_floating_refusals_and_failures_leave_nothing_behind(
    setup: tuple[Agent, list[str]],
) -> None:
    agent, log = setup
    ready_node(agent.state, "a")
    ready_node(agent.state, "b")
    ready_node(agent.state, "c")
    await agent.attach_floating("acme", "a", "203.0.113.10", "acme-token")
    before = everything(agent)
    agent.publisher.taken.add("203.0.113.11")  # type: ignore[attr-defined]
    for address, code in [
        ("203.0.113.10", "floating_taken"),  # node a's, here
        ("203.0.113.11", "floating_taken"),  # the directory says it is another's
        ("203.0.113.99", "floating_outside_pool"),
    ]:
        with pytest.raises(Exception) as refused:
            await agent.attach_floating("acme", "b", address, "acme-token")
        assert getattr(refused.value, "code", None) == code
        assert everything(agent) == before
    agent.switch.fail = True  # type: ignore[attr-defined]
    agent.publisher.taken.clear()  # type: ignore[attr-defined]
    with pytest.raises(OSError):
        await agent.attach_floating("acme", "b", None, "acme-token")
    assert everything(agent) == before, "the directory's attachment is undone"
    await agent.attach_floating("acme", "b", None, "acme-token")
    with pytest.raises(FloatingExhausted):
        await agent.attach_floating("acme", "c", None, "acme-token")
    status = await agent.status()
    assert (status.floating, status.floating_free) == (FLOATING_POOL, 0)


async def test_a_failed_detach_in_the_directory_puts_the_key_back(
    setup: tuple[Agent, list[str]],
) -> None:
    agent, _ = setup
    node = ready_node(agent.state, "a")
    await agent.attach_floating("acme", "a", None, "acme-token")

    async def down(tenant: str, name: str) -> None:
        raise OSError("directory down")

    agent.publisher.detach_floating = down  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await agent.detach_floating("acme", "a", "acme-token")
    assert agent.state.get(node.id).floating == "203.0.113.10"
    assert agent.switch.ports[node.port][FLOATING] == "203.0.113.10"  # type: ignore[attr-defined]


# -- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["node", "create", "acme/web", "-n", "web", "--publish", "8080:80/sctp"],
        ["node", "create", "acme/web", "-n", "web", "-p", "80:80", "-p", "http"],
        ["node", "publish", "acme/web", "8080:80", "70000:80"],
        ["node", "publish", "acme/web", "61000:80"],
    ],
)
def test_a_bad_published_port_is_a_one_line_error_before_any_agent(args: list[str]) -> None:
    """The agent socket does not exist: reaching it would be another error."""
    result = CliRunner().invoke(main, [*args, "--agent", "/nonexistent.sock"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("nvi: ") and result.stderr.count("\n") == 1, result.stderr
    assert "HOST_PORT:NODE_PORT" in result.stderr or "60999" in result.stderr, result.stderr


def test_published_ports_are_typed_as_docker_writes_them() -> None:
    from nvi.client.node_cli import parse_published

    assert parse_published(["8080:80", "53:53/udp"]) == [P("8080:80/tcp"), P("53:53/udp")]
