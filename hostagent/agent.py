"""The agent: a whole cloud of one server. It creates, stops, starts and deletes this server's
nodes, plumbs them into the local bridge and publishes them to the directory, keeping all
three (driver, switch, directory) consistent with its sqlite state, also across crashes.

Every change is ordered so that the state row exists before anything it describes and
outlives it: create = reserve row -> publish -> node (driver: define, run, interface) ->
port -> ready; delete = mark deleting -> node -> port -> unpublish -> drop row. A failure
undoes what was done; a crash leaves a row in `creating` or `deleting` that the next
reconciliation finishes (undoing a create, completing a delete).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import ipaddress
import logging
from collections.abc import Callable

from federation.models import Announcement, Resources
from hostagent.config import AgentConfig, CatalogueConfig
from hostagent.drivers import NodeDriver
from hostagent.errors import Conflict, Full, NotFound, Unauthorized
from hostagent.metrics import AgentMetrics
from hostagent.models import AgentStatus, Desired, ImageInfo, NodeCreate, NodeInfo, Phase
from hostagent.ovs import Switch
from hostagent.plumbing import ifindex
from hostagent.publisher import Publisher
from hostagent.state import State, joined
from hostagent.waysin import (
    FloatingAttached,
    check_published,
    choose_floating,
    server_ephemeral_ports,
    server_listening,
)
from nvi.core.errors import NviError
from nvi.core.model import NodeKind, PublishedPort

log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        state: State,
        drivers: list[NodeDriver],
        switch: Switch,
        publisher: Publisher,
        metrics: AgentMetrics,
    ) -> None:
        self.config = config
        self.state = state
        self.drivers = {driver.kind: driver for driver in drivers}
        self.switch = switch
        self.publisher = publisher
        self.metrics = metrics
        # One change at a time: changes are short (a container start), and a single writer
        # keeps locator allocation, capacity checks and reconciliation simple and correct.
        self.lock = asyncio.Lock()
        self.steps: dict[str, str] = {}  # node id -> the step its create is at (for `show`)
        # Called after anything that changes free capacity (the catalogue re-announces).
        self.on_change: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for listener in self.on_change:
            listener()

    # -- create ---------------------------------------------------------------------------

    async def create(self, request: NodeCreate, token: str | None) -> NodeInfo:
        try:
            with self.metrics.operation("create", str(request.kind)):
                return await self._create(request, token)
        finally:
            self._changed()

    async def _create(self, request: NodeCreate, token: str | None) -> NodeInfo:
        token = _require(token)
        if request.image is None:
            request = request.model_copy(update={"image": self.driver(request.kind).default_image})
        async with self.lock:
            await self._check(request)
            taken = await self.switch.locators()
            node = self.state.reserve(request, self.config.locator_pool, taken)
            step = functools.partial(self.steps.__setitem__, node.id)
            try:
                step("publishing it to the directory")
                network = await self.publisher.network(token, request.tenant, request.network)
                if request.ip is not None and not network.usable(request.ip):
                    raise Conflict(
                        f"{request.ip} is not a usable address of network {network.name} "
                        f"({network.cidr}, gateway {network.gateway})"
                    )
                record = await self.publisher.publish(token, node, request.ip)
                node = self.state.update(
                    node.id,
                    directory_id=record.id,
                    ip=record.ip,
                    mac=record.mac,
                    gateway=network.gateway,
                    prefixlen=ipaddress.ip_network(network.cidr).prefixlen,
                )
                driver = self.driver(node.kind)
                if node.image == driver.default_image:
                    await driver.ensure_default_image(step)
                step(f"starting its {node.kind}")
                await driver.create(node)
                await self._bring_up(node)
                return self.state.update(node.id, phase=Phase.READY)
            except BaseException:
                step("rolling back")
                await self._undo(node.id)
                raise
            finally:
                self.steps.pop(node.id, None)

    async def _check(self, request: NodeCreate) -> None:
        """Refuse what cannot work before anything is reserved. What this server has (kinds,
        images, capacity) is its state, not the request's form: 409 (docs/decisions.md)."""
        driver = self.driver(request.kind)
        driver.check(request)
        self._check_published("", request.publish)
        wanted = request.image or driver.default_image  # a request without one means the default
        buildable = wanted == driver.default_image
        if not buildable and not await driver.has_image(wanted):
            known = sorted(image.name for image in await driver.images())
            raise Conflict(f"unknown image {wanted!r}; images here: {', '.join(known)}")
        capacity = self.config.capacity
        cpus, memory = self.state.reserved()
        if request.cpus > capacity.cpus or request.memory_mib > capacity.memory_mib:
            raise Full(
                f"limits beyond this server's capacity ({capacity.cpus:g} CPUs, "
                f"{capacity.memory_mib} MiB)"
            )
        if cpus + request.cpus > capacity.cpus or memory + request.memory_mib > capacity.memory_mib:
            raise Full(
                f"not enough free capacity: {capacity.cpus - cpus:g} CPUs and "
                f"{capacity.memory_mib - memory} MiB are left"
            )

    def _check_published(self, node_id: str, wanted: list[PublishedPort]) -> None:
        """Refuse host ports another node here publishes or the server uses: the agent's own
        API port, whatever listens on the server's address now, and the source ports of the
        server's own connections."""
        if not wanted:
            return
        own = server_listening(self.config.underlay)
        if self.config.tcp is not None:
            own |= {(self.config.tcp.port, "tcp")}
        ephemeral = server_ephemeral_ports()
        check_published(node_id, wanted, self.state.published(), own, ephemeral)

    def driver(self, kind: NodeKind) -> NodeDriver:
        if kind not in self.drivers:
            have = ", ".join(sorted(self.drivers))
            raise Conflict(f"kind {kind}: this server has no {kind} driver (it has: {have})")
        return self.drivers[kind]

    async def _bring_up(self, node: NodeInfo) -> list[str]:
        """Run the node with its interface, then plug the interface (afresh, if the driver
        made a new one) into the bridge."""
        done = await self.driver(node.kind).start(node)
        if done or (await self.switch.ports()).get(node.port) != await ifindex(node.port):
            await self.switch.plug(node)
            done.append("plugged its port into the bridge")
        elif await self.switch.sync(node):
            done.append("rewrote its port's keys from the state")
        return done

    async def _undo(self, node_id: str) -> bool:
        """Remove everything of a node whose create failed; the row goes last, and stays (for
        the next reconciliation) if the directory record could not be removed."""
        node = self.state.get(node_id)
        try:
            await self._remove_local(node)
            await self.publisher.unpublish(node.tenant, node.name, node.locator)
        except (NviError, OSError) as error:
            log.warning("rolling back %s/%s is incomplete: %s", node.tenant, node.name, error)
            return False
        self.state.delete(node_id)
        return True

    async def _remove_local(self, node: NodeInfo) -> None:
        await self.driver(node.kind).remove(node.id)
        await self.switch.unplug(node.port)

    # -- the other verbs ------------------------------------------------------------------

    def nodes(self, tenant: str | None = None) -> list[NodeInfo]:
        return self.state.nodes(tenant)

    async def show(self, tenant: str, name: str) -> NodeInfo:
        node = self.node(tenant, name)
        driver = self.driver(node.kind)
        state = await driver.state(node)
        if node.phase != Phase.READY:
            step = self.steps.get(node.id, str(node.phase))
            return node.model_copy(update={"state": state, "progress": step})
        ready, line = await driver.booted(node) if state == "running" else (False, "")
        return node.model_copy(update={"state": state, "ready": ready, "progress": line})

    async def listing(self, tenant: str | None = None) -> list[NodeInfo]:
        return [await self.show(node.tenant, node.name) for node in self.state.nodes(tenant)]

    async def stop(self, tenant: str, name: str) -> NodeInfo:
        async with self.lock:
            node = self._ready(tenant, name)
            await self.driver(node.kind).stop(node)
            await self.switch.unplug(node.port)
            self.state.update(node.id, desired=Desired.STOPPED)
        return await self.show(tenant, name)

    async def start(self, tenant: str, name: str) -> NodeInfo:
        async with self.lock:
            node = self._ready(tenant, name)
            self.state.update(node.id, desired=Desired.RUNNING)
            await self._bring_up(node)
        return await self.show(tenant, name)

    # -- ways in --------------------------------------------------------------------------

    async def publish(
        self, tenant: str, name: str, ports: list[PublishedPort], token: str | None
    ) -> NodeInfo:
        """Replace the node's published ports; refused (409, nothing changed) if another
        node here or the server itself has one of the host ports."""
        token = _require(token)
        async with self.lock:
            node = self._ready(tenant, name)
            await self._authorise(token, node)
            self._check_published(node.id, ports)
            await self._rewrite(node, published=joined(ports))
        return await self.show(tenant, name)

    async def attach_floating(
        self, tenant: str, name: str, address: str | None, token: str | None
    ) -> NodeInfo:
        """Attach `address` (default: the lowest free of this server's pool): the directory
        first (it refuses an address another server's node holds), then the state, then the
        port's key; a failure undoes what was done. The same address again changes nothing."""
        token = _require(token)
        async with self.lock:
            node = self._ready(tenant, name)
            await self._authorise(token, node)
            if node.floating is not None:
                if address not in (None, node.floating):
                    raise FloatingAttached(
                        f"node {tenant}/{name} has floating address {node.floating}; detach "
                        "it first"
                    )
                return await self.show(tenant, name)
            held = self.state.floating()
            chosen = choose_floating(self.config.floating_pool, held, address)
            await self.publisher.attach_floating(token, tenant, name, chosen)
            try:
                await self._rewrite(node, floating=chosen)
            except BaseException:
                await self.publisher.detach_floating(tenant, name)
                raise
        return await self.show(tenant, name)

    async def detach_floating(self, tenant: str, name: str, token: str | None) -> NodeInfo:
        """Remove the port's key first (traffic to the address stops at once), then the
        directory's record, then the state; without an address, nothing to do."""
        token = _require(token)
        async with self.lock:
            node = self._ready(tenant, name)
            await self._authorise(token, node)
            if node.floating is not None:
                await self.switch.sync(node.model_copy(update={"floating": None}))
                try:
                    await self.publisher.detach_floating(tenant, name)
                except BaseException:
                    await self.switch.sync(node)
                    raise
                self.state.update(node.id, floating=None)
        return await self.show(tenant, name)

    async def _rewrite(self, node: NodeInfo, **values: str | None) -> None:
        """Record a change of the node's ways in, then write its port's keys; if the switch
        fails the state is put back (the caller undoes anything before)."""
        before = {"floating": node.floating, "published": joined(node.published)}
        changed = self.state.update(node.id, **values)
        try:
            await self.switch.sync(changed)
        except BaseException:
            self.state.update(node.id, **{key: before[key] for key in values})
            raise

    async def delete(self, tenant: str, name: str, token: str | None) -> None:
        try:
            with self.metrics.operation("delete", str(self.node(tenant, name).kind)):
                await self._delete(tenant, name, token)
        finally:
            self._changed()

    async def _delete(self, tenant: str, name: str, token: str | None) -> None:
        token = _require(token)
        async with self.lock:
            node = self.node(tenant, name)
            if node.phase == Phase.CREATING:
                raise Conflict(f"node {tenant}/{name} is being rolled back; try again later")
            await self._authorise(token, node)
            self.state.update(node.id, phase=Phase.DELETING)
            await self._finish_delete(node.id)

    async def drain(self, directory_token: str | None) -> list[NodeInfo]:
        """Delete every node of this server with its directory record: how an operator takes
        a server out of service without the tenants' tokens. The directory's admin
        credential comes with the request and is checked before anything changes; records
        are withdrawn with the server's own credential, so a crash half-way is finished by
        reconciliation."""
        if not directory_token or not await self.publisher.is_admin(directory_token):
            raise Unauthorized("draining needs the directory's admin token (X-Directory-Token)")
        async with self.lock:
            drained = self.state.nodes()
            try:
                for node in drained:
                    self.state.update(node.id, phase=Phase.DELETING)
                    await self._finish_delete(node.id)
            finally:
                self._changed()
        return drained

    async def _authorise(self, token: str, node: NodeInfo) -> None:
        """The token must be the node's tenant's: the directory must show it the record."""
        try:
            await self.publisher.network(token, node.tenant, node.network)
        except NviError as error:
            if getattr(error, "status", None) in (401, 403, 404):
                raise Unauthorized(f"the token is not valid for tenant {node.tenant}") from None
            raise

    async def _finish_delete(self, node_id: str) -> None:
        node = self.state.get(node_id)
        await self._remove_local(node)
        await self.publisher.unpublish(node.tenant, node.name, node.locator)
        self.state.delete(node_id)

    def node(self, tenant: str, name: str) -> NodeInfo:
        node = self.state.find(tenant, name)
        if node is None:
            raise missing(tenant, name)
        return node

    def _ready(self, tenant: str, name: str) -> NodeInfo:
        node = self.node(tenant, name)
        if node.phase != Phase.READY:
            raise Conflict(f"node {tenant}/{name} is {node.phase}")
        return node

    # -- reconciliation -------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Make the server match the state: finish or undo interrupted operations, bring
        nodes to their desired state, re-plumb missing wires and ports, remove orphans."""
        async with self.lock:
            repairs: list[str] = []
            for node in self.state.nodes():
                label = f"{node.tenant}/{node.name}"
                try:
                    if node.phase == Phase.CREATING:
                        if await self._undo(node.id):
                            repairs.append(f"rolled back the interrupted create of {label}")
                    elif node.phase == Phase.DELETING:
                        await self._finish_delete(node.id)
                        repairs.append(f"finished the interrupted delete of {label}")
                    else:
                        repairs += [f"{label}: {r}" for r in await self._converge(node)]
                except (NviError, OSError) as error:
                    log.warning("reconciling %s: %s", label, error)
            repairs += await self._remove_orphans()
        self.metrics.reconciliations.inc()
        self.metrics.repairs.inc(len(repairs))
        if repairs:
            self._changed()
        for repair in repairs:
            log.info("reconcile: %s", repair)
        return repairs

    async def _converge(self, node: NodeInfo) -> list[str]:
        driver = self.driver(node.kind)
        repairs = []
        state = await driver.state(node)
        if state == "missing":
            await driver.create(node)
            repairs.append(f"re-created its missing {node.kind}")
        if node.desired == Desired.RUNNING:
            return repairs + await self._bring_up(node)
        if state == "running":
            await driver.stop(node)
            repairs.append(f"stopped its {node.kind}")
        await self.switch.unplug(node.port)
        return repairs

    async def _remove_orphans(self) -> list[str]:
        """Nodes, interfaces and ports of this agent that no state row accounts for: left by
        a crash between making them and recording or after removing the row."""
        nodes = self.state.nodes()
        known = {node.id for node in nodes}
        ports = {node.port for node in nodes}
        repairs = []
        for driver in self.drivers.values():
            repairs += await driver.orphans(known)
        for port in await self.switch.ports():
            if port not in ports:
                await self.switch.unplug(port)
                repairs.append(f"removed orphan port {port}")
        return repairs

    async def reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            try:
                await self.reconcile()
            except (NviError, OSError) as error:
                log.warning("reconciliation failed: %s", error)

    # -- status ---------------------------------------------------------------------------

    async def images(self) -> list[ImageInfo]:
        return [image for driver in self.drivers.values() for image in await driver.images()]

    async def status(self) -> AgentStatus:
        nodes = self.state.nodes()
        cpus, memory = self.state.reserved()
        capacity = self.config.capacity
        pool = self.config.floating_pool
        return AgentStatus(
            server=self.config.name,
            underlay=self.config.underlay,
            locators=self.config.locators,
            bridge=self.config.bridge,
            nodes=len(nodes),
            locators_free=self.config.locator_pool.size - len(nodes),
            floating=self.config.floating,
            floating_free=pool.size - len(self.state.floating()) if pool else 0,
            cpus_free=capacity.cpus - cpus,
            memory_mib_free=capacity.memory_mib - memory,
            drivers={str(kind): await driver.health() for kind, driver in self.drivers.items()},
            ovs=await self.switch.health(),
            directory=await self.publisher.health(),
        )

    async def announcement(self, catalogue: CatalogueConfig) -> Announcement:
        """This server as the catalogue shows it to users: where its agent is, what it has
        and what is free, and the kinds whose driver works now."""
        capacity = self.config.capacity
        cpus, memory = self.state.reserved()
        pool = self.config.locator_pool.size
        kinds = [
            kind
            for kind, driver in self.drivers.items()
            if (await driver.health()).startswith("ok")
        ]
        if not kinds:
            raise NviError("no node kind can be created now (see the drivers in the status)")
        return Announcement(
            agent_url=catalogue.agent_url,
            cloud=catalogue.cloud,
            kinds=kinds,
            capacity=Resources(cpus=capacity.cpus, memory_mib=capacity.memory_mib, locators=pool),
            free=Resources(
                cpus=max(capacity.cpus - cpus, 0),
                memory_mib=max(capacity.memory_mib - memory, 0),
                locators=max(pool - len(self.state.nodes()), 0),
            ),
            version=importlib.metadata.version("nvi"),
            lease_seconds=catalogue.lease_seconds,
        )


def missing(tenant: str, name: str) -> NotFound:
    """The answer for a node that is not here, and for another tenant's node: the same words."""
    return NotFound(f"no node {tenant}/{name} on this server")


def _require(token: str | None) -> str:
    if not token:
        raise Unauthorized("the tenant's directory token is needed: send X-Tenant-Token")
    return token
