"""OVSDB through its IDL, against a real ovsdb-server and ovs-vswitchd that the test starts in
a namespace of its own: the agent's plug and unplug are whole transactions, a failed
transaction leaves nothing, and row changes reach a reader as events (no CLI polling).

ovs-vsctl here is the independent witness (and, for the controller, the lab's way of plugging
a namespace node), never the code under test.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostagent.errors import Failed
from hostagent.models import Desired, NodeInfo, Phase
from hostagent.ovs import Switch, node_port
from nvi.core.ovsdb import InterfaceChange, Ovsdb, OvsdbError
from nvi.core.ports import AgentPort, NodePort, vsctl_rows, vsctl_set_args
from nvi.lab import links
from nvi.lab.ovs import BRIDGE, OvsInstance
from nvi.lab.process import ensure_running, stop
from openflow.service import follow_ports, read_node_ports

pytestmark = pytest.mark.root
AGENT_ID = "agent-test"


@pytest.fixture
def ovs() -> Iterator[OvsInstance]:
    """A private OVS (database, vswitchd, netdev bridge) in a namespace tagged for this test."""
    netns = f"nvi-t{uuid.uuid4().hex[:7]}-ovsdb"
    rundir = Path(tempfile.mkdtemp(prefix="nvi-ovsdb-", dir="/tmp"))
    instance = OvsInstance(netns, rundir)
    daemons = instance.daemons()
    try:
        links.ensure_netns(netns, {"net.ipv6.conf.all.disable_ipv6": "1"})
        instance.ensure_database()
        for daemon in daemons:
            ensure_running(daemon)
        instance.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev")
        yield instance
    finally:
        for daemon in reversed(daemons):
            stop(daemon)
        links.remove_netns(netns)
        shutil.rmtree(rundir)


def node(number: int) -> NodeInfo:
    return NodeInfo(
        id=f"local-{number}",
        tenant="acme",
        name=f"web{number}",
        kind="container",
        network="web",
        image="busybox",
        cpus=0.1,
        memory_mib=64,
        locator=f"198.51.100.{64 + number}",
        ip=f"10.1.0.{10 + number}",
        mac=f"52:54:00:00:00:{number:02x}",
        gateway="10.1.0.1",
        prefixlen=24,
        directory_id=f"n-{number}",
        phase=Phase.READY,
        desired=Desired.RUNNING,
        port=f"nv{number:010x}",
        created=0.0,
    )


def interfaces(ovs: OvsInstance) -> dict[str, dict[str, str]]:
    """Interface name -> external_ids, as a separate client reads them from the server."""
    answer = ovs.vsctl("--format=json", "--columns=name,external_ids", "list", "Interface")
    return {row["name"]: row["external_ids"] for row in vsctl_rows(answer)}


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_plug_writes_the_port_with_its_identity_in_one_transaction(
    ovs: OvsInstance,
) -> None:
    """The first sight any reader gets of the new Interface row (its "create" event) already
    carries the whole contract: no reader can see a node port without its identity."""
    web = node(1)
    watcher = Ovsdb(f"unix:{ovs.db_socket}")
    switch = Switch(f"unix:{ovs.db_socket}", BRIDGE, AGENT_ID)
    await watcher.start()
    await switch.start()
    seen: list[InterfaceChange] = []
    watcher.watch_interfaces(seen.append)
    try:
        await switch.plug(web)
        await until(lambda: any(c.interface.name == web.port for c in seen))
        first = next(c for c in seen if c.interface.name == web.port)
        assert first.kind == "create"
        assert NodePort.from_external_ids(first.interface.external_ids) == node_port(web)
        assert AgentPort.from_external_ids(first.interface.external_ids) == AgentPort(
            AGENT_ID, web.id, web.name
        )
        assert NodePort.from_external_ids(interfaces(ovs)[web.port]) == node_port(web)
        assert set(await switch.ports()) == {web.port}
        assert await switch.locators() == {web.locator}
        assert await switch.health() == "ok"

        await switch.unplug(web.port)
        await until(lambda: seen[-1].kind == "delete" and seen[-1].interface.name == web.port)
        assert web.port not in interfaces(ovs)
        assert await switch.ports() == {}
    finally:
        await switch.close()
        await watcher.close()


async def test_a_failed_transaction_leaves_nothing(ovs: OvsInstance) -> None:
    """A port with its identity, then a command the server refuses (a second port of the same
    name): the whole transaction fails, so not even the first port is there."""
    ovsdb = Ovsdb(f"unix:{ovs.db_socket}")
    await ovsdb.start()
    web = node(2)
    ids = node_port(web).external_ids()
    try:
        with pytest.raises(OvsdbError, match="constraint violation"):
            await ovsdb.transact(
                ovsdb.api.add_port(BRIDGE, web.port, may_exist=False, external_ids=ids),
                ovsdb.api.add_port(BRIDGE, web.port, may_exist=False),
            )
        assert ovs.vsctl("list-ports", BRIDGE).split() == []
        assert web.port not in interfaces(ovs)
        assert [i for i in await ovsdb.interfaces() if i.name == web.port] == []
    finally:
        await ovsdb.close()


async def test_plugging_into_a_missing_bridge_fails_and_leaves_nothing(ovs: OvsInstance) -> None:
    switch = Switch(f"unix:{ovs.db_socket}", "br-missing", AGENT_ID)
    await switch.start()
    try:
        with pytest.raises(Failed):
            await switch.plug(node(3))
        assert node(3).port not in interfaces(ovs)
        assert await switch.health() == "no bridge br-missing"
    finally:
        await switch.close()


async def test_the_controller_follows_interface_rows(ovs: OvsInstance) -> None:
    """A port the lab plugs with ovs-vsctl reaches the controller as an event, and its node
    ports come from the connection's replica; so does the port's removal."""
    ovsdb = Ovsdb(f"unix:{ovs.db_socket}")
    await ovsdb.start()
    seen: list[dict[str, NodePort]] = []

    class Controller:
        async def ports_changed(self) -> None:
            seen.append(await read_node_ports(ovsdb))

    follower = asyncio.create_task(follow_ports(ovsdb, Controller()))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the follower registers its watch
    web = node(4)
    try:
        ovs.vsctl(
            "add-port", BRIDGE, web.port, "--", "set", "interface", web.port,
            *vsctl_set_args(node_port(web).external_ids()),
        )  # fmt: skip
        await until(lambda: bool(seen) and seen[-1] == {web.port: node_port(web)})
        ovs.vsctl("del-port", BRIDGE, web.port)
        await until(lambda: seen[-1] == {})
    finally:
        follower.cancel()
        await ovsdb.close()


async def test_an_unreachable_database_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(OvsdbError, match="unreachable"):
        await Ovsdb(f"unix:{tmp_path / 'db.sock'}", timeout=1).start()
