"""Placement by the client: which servers a node may go to, best first, and how a create
walks them when the first turns out full."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from federation.models import CatalogueEntry, Identity, Resources
from hostagent.client import AgentClient
from hostagent.errors import Conflict, Full, Invalid
from hostagent.models import NodeInfo
from nvi.client.cloud import Cloud, is_full
from nvi.client.placement import NoServer, candidates
from nvi.core.model import NodeKind

NOW = datetime.now(UTC)


def entry(
    server: str,
    *,
    cloud: str = "east",
    cpus: float = 4,
    memory: int = 1024,
    locators: int = 8,
    alive: bool = True,
    kinds: tuple[str, ...] = ("container",),
) -> CatalogueEntry:
    return CatalogueEntry(
        server=server,
        agent_url=f"https://{server}.example:7490",
        cloud=cloud,
        kinds=[NodeKind(kind) for kind in kinds],
        capacity=Resources(cpus=8, memory_mib=4096, locators=8),
        free=Resources(cpus=cpus, memory_mib=memory, locators=locators),
        version="0.1",
        announced=NOW,
        expires=NOW + timedelta(seconds=15 if alive else -1),
        alive=alive,
    )


def names(entries: list[CatalogueEntry]) -> list[str]:
    return [e.server for e in entries]


def pick(entries: list[CatalogueEntry], **kwargs: Any) -> list[str]:
    kwargs = {"kind": NodeKind.CONTAINER, "cpus": 1.0, "memory_mib": 128} | kwargs
    return names(candidates(entries, **kwargs))


def test_most_free_memory_first_then_cpus_then_name() -> None:
    cat = [entry("s3", memory=512), entry("s1", memory=1024, cpus=2), entry("s2", memory=1024)]
    assert pick(cat) == ["s2", "s1", "s3"]
    assert pick([entry("b"), entry("a")]) == ["a", "b"]


def test_a_full_server_is_skipped_for_another() -> None:
    cat = [entry("s1", memory=64), entry("s2", memory=256), entry("s3", locators=0)]
    assert pick(cat) == ["s2"]
    assert pick([entry("s1", cpus=8)], cpus=8.0) == ["s1"]


def test_dead_servers_and_missing_kinds_are_skipped() -> None:
    cat = [entry("s1", alive=False, memory=4096), entry("s2"), entry("s3", kinds=("vm",))]
    assert pick(cat) == ["s2"]
    assert pick(cat, kind=NodeKind.VM) == ["s3"]


def test_cloud_and_server_are_honoured() -> None:
    cat = [entry("s1", cloud="east", memory=4096), entry("s2", cloud="west"), entry("s3")]
    assert pick(cat, cloud="west") == ["s2"]
    assert pick(cat, server="s3") == ["s3"]
    with pytest.raises(NoServer, match="no server in cloud north"):
        pick(cat, cloud="north")
    with pytest.raises(NoServer, match="server s9 is not in the catalogue"):
        pick(cat, server="s9")
    with pytest.raises(NoServer, match="server s1 is not alive"):
        pick([entry("s1", alive=False)], server="s1")


def test_none_with_room_is_a_one_line_no_server() -> None:
    cat = [entry("s1", memory=100), entry("s2", cpus=0.5)]
    with pytest.raises(NoServer) as caught:
        pick(cat, cloud="east")
    assert str(caught.value) == (
        "no live server in cloud east has room for a container with 1 CPUs and 128 MiB"
    )
    with pytest.raises(NoServer, match="no live server in the catalogue runs a vm"):
        pick(cat, kind=NodeKind.VM)


class FakeCloud(Cloud):
    """A Cloud whose directory answers are given: only the placement loop is real."""

    def __init__(self, entries: list[CatalogueEntry]) -> None:
        super().__init__(["https://directory.example:7480"], "nvi_token", None)
        self.entries = entries

    async def catalogue(self) -> list[CatalogueEntry]:
        return self.entries

    async def whoami(self) -> Identity:
        return Identity(role="tenant", tenant="red")


def created(agent: AgentClient, body: dict[str, Any]) -> NodeInfo:
    return NodeInfo.model_validate(
        body
        | {
            "id": "1",
            "image": "nvi/busybox:latest",
            "locator": "192.0.2.9",
            "phase": "ready",
            "desired": "running",
            "port": "nv1",
            "created": 0,
            "progress": agent.address,
        }
    )


def run_create(
    entries: list[CatalogueEntry], refuse: dict[str, Exception], **where: str
) -> tuple[list[str], NodeInfo | Exception]:
    tried: list[str] = []

    async def create(entry: CatalogueEntry, agent: AgentClient, body: dict[str, Any]) -> NodeInfo:
        assert agent.address == entry.agent_url
        tried.append(agent.address)
        assert body == {
            "name": "web",
            "network": "net",
            "tenant": "red",
            "kind": "container",
            "cpus": 1,
            "memory_mib": 128,
        }
        if agent.address in refuse:
            raise refuse[agent.address]
        return created(agent, body)

    async def go() -> NodeInfo | Exception:
        async with FakeCloud(entries) as cloud:
            spec = {"name": "web", "network": "net", "cpus": 1, "memory_mib": 128, "ip": None}
            try:
                return await cloud.create_node(spec, create=create, **where)
            except Exception as error:
                return error

    outcome = asyncio.run(go())
    return [url.split("//")[1].split(".")[0] for url in tried], outcome


def test_a_stale_entry_whose_agent_is_full_passes_to_the_next() -> None:
    full = Full("not enough free capacity: 0 CPUs and 0 MiB are left")
    assert is_full(full)
    tried, node = run_create(
        [entry("s1", memory=2048), entry("s2")], {"https://s1.example:7490": full}
    )
    assert tried == ["s1", "s2"]
    assert isinstance(node, NodeInfo) and node.progress == "https://s2.example:7490"


def test_another_refusal_stops_at_once() -> None:
    taken = Conflict("node red/web already exists here")
    assert not is_full(taken)
    tried, error = run_create(
        [entry("s1", memory=2048), entry("s2")], {"https://s1.example:7490": taken}
    )
    assert tried == ["s1"] and error is taken
    bad = Invalid("unknown image 'x'")
    assert run_create([entry("s1")], {"https://s1.example:7490": bad})[1] is bad


def test_all_full_is_no_server_and_the_cloud_is_honoured() -> None:
    full = Full("no free locator: all 8 of this server's are in use")
    entries = [entry("s1", memory=4096), entry("s2", cloud="west"), entry("s3")]
    tried, node = run_create(entries, {}, cloud="west")
    assert tried == ["s2"] and isinstance(node, NodeInfo)
    refuse = {"https://s1.example:7490": full, "https://s3.example:7490": full}
    tried, error = run_create(entries, refuse, cloud="east")
    assert tried == ["s1", "s3"]
    assert isinstance(error, NoServer) and "s1: no free locator" in str(error)
    tried, error = run_create([entry("s1", memory=64)], {})
    assert tried == [] and isinstance(error, NoServer)
