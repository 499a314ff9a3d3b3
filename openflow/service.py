"""`nvi controller serve`: one controller per server, next to that server's switch.

It knows only its own server (underlay address, OVSDB socket, the bridge it serves), the
underlay infrastructure it must never rewrite towards, and the directory's URL with its
server's own credential. It runs inside the server's network namespace, so route lookups for
next hops use the server's own routing table, unless the config lists the server's underlay
routes itself (`routes`), for a controller that runs elsewhere (Mininet).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from pyroute2 import IPRoute

from federation.client import CachedResolver, DirectoryClient
from nvi.core.config import load_toml_model
from nvi.core.ovsdb import InterfaceChange, Ovsdb
from nvi.core.ports import NodePort
from openflow.controller import Controller
from openflow.flows import PAIR_IDLE_TIMEOUT
from openflow.metrics import ControllerMetrics, serve_metrics

log = logging.getLogger(__name__)

METRICS_PORT = 9653


class Route(BaseModel):
    """One underlay route of this server, as its routing table would hold it."""

    model_config = ConfigDict(extra="forbid")

    prefix: ipaddress.IPv4Network
    via: ipaddress.IPv4Address | None = Field(
        None, description="the router towards `prefix`; omitted: `prefix` is on-link"
    )


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="this server's own underlay address")
    directory: str = Field(description="URL of the federation directory")
    token_file: Path = Field(description="the server's credential; relative to this file")
    ca_file: Path | None = Field(
        None, description="CA of the directory's certificate (default: system trust); relative"
    )
    ovsdb: str = Field(description="this server's OVSDB, e.g. unix:/run/.../db.sock")
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(6653, ge=1, le=65535)
    uplink: str = "uplink"
    metrics_host: str = Field(
        "127.0.0.1", description="where Prometheus scrapes GET /metrics (plain HTTP)"
    )
    metrics_port: int = Field(METRICS_PORT, ge=1, le=65535)
    state_dir: Path = Field(Path("."), description="ready and stats files; relative to this file")
    idle_timeout: int = Field(
        PAIR_IDLE_TIMEOUT, ge=1, le=65535, description="seconds a silent conversation lasts"
    )
    infrastructure: list[ipaddress.IPv4Network] = Field(
        default_factory=list,
        description="underlay addresses and prefixes no rewrite may target (routers, other "
        "infrastructure); this server's own address and the directory's are always added",
    )
    underlay: list[ipaddress.IPv4Network] = Field(
        default_factory=list,
        description="the underlay's prefixes (where servers live): outbound access never goes "
        "there, so a tenant's way out never reaches another server",
    )
    routes: list[Route] = Field(
        default_factory=list,
        description="this server's underlay routes, for a controller that does not run in the "
        "server's namespace (Mininet); when given, the kernel's routing table is never asked",
    )


def load_config(path: str | Path) -> ControllerConfig:
    path = Path(path)
    config = load_toml_model(path, ControllerConfig, "controller config")
    base = path.parent.resolve()
    config.token_file = base / config.token_file
    if config.ca_file is not None:
        config.ca_file = base / config.ca_file
    config.state_dir = base / config.state_dir
    return config


def render_config(config: ControllerConfig) -> str:
    """The config as a TOML file (the lab writes each server's controller.toml this way)."""
    data = config.model_dump(mode="json", exclude_none=True)
    routes = data.pop("routes")
    # JSON strings, numbers and arrays of strings are valid TOML values.
    lines = ["# NVI controller (see docs/dataplane.md)"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in data.items()]
    for route in routes:
        lines += ["", "[[routes]]", *(f"{k} = {json.dumps(v)}" for k, v in route.items())]
    return "\n".join(lines) + "\n"


async def directory_addresses(url: str) -> list[ipaddress.IPv4Network]:
    """The directory's underlay address(es): its URL's host if that is an IP literal, else
    what the name resolves to now (once, at start: a controller never follows DNS changes
    into treating a new address as infrastructure or not)."""
    host = urlsplit(url).hostname
    if host is None:
        raise ValueError(f"directory URL {url!r} has no host")
    try:
        literal = ipaddress.IPv4Address(host)
    except ValueError:
        found = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET)
        return sorted({ipaddress.IPv4Network(address[4][0]) for address in found})
    return [ipaddress.IPv4Network(literal)]


async def read_node_ports(ovsdb: Ovsdb) -> dict[str, NodePort]:
    """Interface name -> node, for the bridge's ports that carry NVI's external_ids (from the
    OVSDB connection's replica: no round trip)."""
    return {
        interface.name: port
        for interface in await ovsdb.interfaces()
        if (port := NodePort.from_external_ids(interface.external_ids)) is not None
    }


async def follow_ports(ovsdb: Ovsdb, controller: Controller) -> None:
    """Tell the controller whenever an Interface row changes: ports are plugged with their
    external_ids in one transaction, but the OpenFlow port status and this connection's
    replica arrive in either order, so both trigger `ports_changed`. Changes during a
    refresh set the flag again: none is lost, a burst costs one or two refreshes."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def notify(_: InterfaceChange) -> None:
        loop.call_soon_threadsafe(changed.set)

    ovsdb.watch_interfaces(notify)
    while True:
        await changed.wait()
        changed.clear()
        await controller.ports_changed()


class NextHops:
    """Next hops from the server's routing table, remembered for a while: a route lookup
    costs a netlink round trip on a worker thread, far more than the rest of a decision.
    With static `routes` the table is never asked."""

    def __init__(self, ttl: float = 30.0, routes: list[Route] | None = None) -> None:
        self.ttl = ttl
        self._lookup: Callable[[str], str] = (
            functools.partial(static_gateway, routes) if routes else _route_gateway
        )
        self._known: dict[str, tuple[str, float]] = {}

    async def __call__(self, destination: str) -> str:
        known = self._known.get(destination)
        if known and known[1] > time.monotonic():
            return known[0]
        hop = await asyncio.to_thread(self._lookup, destination)
        self._known[destination] = (hop, time.monotonic() + self.ttl)
        return hop


def _route_gateway(destination: str) -> str:
    with IPRoute() as ipr:
        route = ipr.route("get", dst=destination)[0]
    return route.get("gateway") or destination


def static_gateway(routes: list[Route], destination: str) -> str:
    """The next hop towards `destination` by longest prefix match, as the kernel would choose;
    no matching route is an error (a first packet is dropped, never sent somewhere else)."""
    address = ipaddress.IPv4Address(destination)
    matching = [route for route in routes if address in route.prefix]
    if not matching:
        raise LookupError(f"no underlay route to {destination} in the controller config")
    best = max(matching, key=lambda route: route.prefix.prefixlen)
    return str(best.via) if best.via else destination


class Runtime:
    """The asyncio side: directory client, resolver and controller, on a thread of its own."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="nvi-asyncio", daemon=True
        )
        self.controller: Controller | None = None
        self._tasks: list[asyncio.Task[None]] = []  # referenced, so never collected mid-run

    def start(self) -> Controller:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> Controller:
        token = self.config.token_file.read_text().strip()
        client = DirectoryClient(self.config.directory, token, ca_file=self.config.ca_file)
        resolver = CachedResolver(client)
        directory = await directory_addresses(self.config.directory)
        ovsdb = Ovsdb(self.config.ovsdb)
        await ovsdb.start()
        controller = Controller(
            resolver,
            functools.partial(read_node_ports, ovsdb),
            NextHops(routes=self.config.routes),
            self.config.address,
            self.config.uplink,
            infrastructure=[*self.config.infrastructure, *directory],
            underlay=self.config.underlay,
            idle_timeout=self.config.idle_timeout,
        )
        resolver.on_change = controller.on_change
        resolver.on_resync = controller.on_resync
        await _start_following(resolver)
        self._tasks = [
            asyncio.create_task(follow_ports(ovsdb, controller)),
            asyncio.create_task(self._write_stats(controller)),
        ]
        metrics = ControllerMetrics(controller, resolver)
        await serve_metrics(metrics.registry, self.config.metrics_host, self.config.metrics_port)
        self.controller = controller
        return controller

    async def _write_stats(self, controller: Controller) -> None:
        """Counters for `nvi lab status` and the tests, refreshed once a second."""
        path = self.config.state_dir / "controller.stats.json"
        last: dict[str, Any] = {}
        while True:
            now = {
                **controller.stats,
                "pairs": len(controller.pairs),
                "nodes": len(controller.nodes),
                **{
                    f"{kind}_decision_ms_p50": round(statistics.median(values), 3)
                    for kind, values in controller.decision_ms.items()
                    if values
                },
            }
            if now != last:
                partial = path.with_suffix(".tmp")
                partial.write_text(json.dumps(now, sort_keys=True))
                partial.replace(path)  # readers never see half a file
                last = now
            await asyncio.sleep(1)


async def _start_following(resolver: CachedResolver) -> None:
    """Follow the change stream; if the directory is not up yet, keep trying in the
    background (lookups fail until then, so first packets are dropped, never misrouted)."""
    try:
        await resolver.start()
    except Exception as error:  # noqa: BLE001 - any failure here means "retry later"
        log.warning("directory not reachable yet (%s); retrying", error)
        asyncio.get_running_loop().call_later(
            1, lambda: asyncio.ensure_future(_start_following(resolver))
        )


def serve(config_path: str) -> None:
    """Run until killed: os-ken on the main thread, the controller on the asyncio thread."""
    config = load_config(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    runtime = Runtime(config)
    controller = runtime.start()

    from os_ken import cfg
    from os_ken.base import app_manager  # before os_ken.controller, as os-ken requires
    from os_ken.lib import hub

    cfg.CONF(args=[], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", config.listen_host)
    cfg.CONF.set_override("ofp_tcp_listen_port", config.listen_port)
    manager = app_manager.AppManager.get_instance()
    manager.load_apps(["openflow.osken_app"])
    contexts = manager.create_contexts()
    services = manager.instantiate_apps(
        **contexts, nvi_controller=controller, nvi_loop=runtime.loop
    )
    (config.state_dir / "controller.ready").write_text("ready\n")
    log.info(
        "controller for %s listening on %s:%d",
        config.address,
        config.listen_host,
        config.listen_port,
    )
    try:
        hub.joinall(services)
    finally:
        manager.close()
