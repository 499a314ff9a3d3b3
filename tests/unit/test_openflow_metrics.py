"""The controller's `GET /metrics`, against the in-memory switch and directory of
test_openflow_controller: packet-ins, decisions by outcome, decision latencies, pairs, local
nodes and the lookup cache move as first packets are handled."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from federation.client import CachedResolver
from federation.errors import Unavailable
from nvi.lab.net import controller_summary
from openflow.metrics import ControllerMetrics, serve_metrics
from tests.scrape import samples, value
from tests.unit.test_openflow_controller import (
    SERVER_ADDRESS,
    A,
    B,
    C,
    D,
    Directory,
    Server,
    record,
)


@pytest.fixture
def server() -> Server:
    """A server whose controller looks up through a CachedResolver that follows changes (the
    production arrangement), with its metrics."""
    server = Server(Directory([A, B, C, D]), {"a": A, "c": C})
    resolver = CachedResolver(server.directory)  # type: ignore[arg-type]
    resolver.live = True
    server.controller.resolver = resolver
    server.metrics = ControllerMetrics(server.controller, resolver)  # type: ignore[attr-defined]
    return server


def scrape(server: Server) -> str:
    """GET /metrics from the controller's metrics app on a loopback port."""

    async def get() -> str:
        runner = await serve_metrics(server.metrics.registry, "127.0.0.1", 0)  # type: ignore[attr-defined]
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    return await response.text()
        finally:
            await runner.cleanup()

    return asyncio.run(get())


def decisions(text: str, outcome: str) -> float:
    return value(text, "nvi_controller_decisions_total", outcome=outcome)


def test_first_packets_move_packet_ins_decisions_pairs_and_the_cache(server: Server) -> None:
    server.connect()
    start = scrape(server)
    assert value(start, "nvi_controller_local_nodes") == 2
    assert value(start, "nvi_controller_switch_connected") == 1
    assert value(start, "nvi_controller_packet_ins_total") == 0
    assert decisions(start, "allowed") == 0

    server.first_packet(A, B.ip)  # same network: allowed
    first = scrape(server)
    assert value(first, "nvi_controller_packet_ins_total") == 1
    assert decisions(first, "allowed") == 1 and decisions(first, "denied") == 0
    assert value(first, "nvi_controller_pairs") == 1
    assert value(first, "nvi_controller_decision_seconds_count", direction="egress") == 1
    assert value(first, "nvi_controller_directory_lookups_total", cache="miss") == 1

    server.first_packet(A, D.ip)  # another network, no link: denied
    server.first_packet(A, "10.0.0.99")  # nobody: denied
    server.first_packet(A, B.ip)  # asked again: from the cache
    server.first_packet_in(B.locator, A)  # B's first packet in: allowed
    later = scrape(server)
    assert value(later, "nvi_controller_packet_ins_total") == 5
    assert (decisions(later, "allowed"), decisions(later, "denied")) == (3, 2)
    assert value(later, "nvi_controller_directory_lookups_total", cache="hit") == 1
    assert value(later, "nvi_controller_decision_seconds_count", direction="egress") == 4
    assert value(later, "nvi_controller_decision_seconds_count", direction="ingress") == 1
    assert value(later, "nvi_controller_lookup_cache_entries") >= 1
    labels = {v for _, pairs in samples(later) for _, v in pairs}
    assert not labels & {"red", "a", "b", A.ip, B.ip, B.locator}


def test_refusals_and_directory_backoffs_are_outcomes_of_their_own(server: Server) -> None:
    rogue = record("rogue", "10.0.0.9", SERVER_ADDRESS)
    server.directory.nodes[rogue.id] = rogue
    server.connect()
    server.first_packet(A, rogue.ip)

    async def unreachable(*_: object, **__: object) -> None:
        raise Unavailable("directory down")

    server.directory.resolve = unreachable  # type: ignore[method-assign]
    server.first_packet(A, B.ip)
    text = scrape(server)
    assert decisions(text, "refused_infrastructure") == 1
    assert decisions(text, "directory_unavailable") == 1
    assert decisions(text, "allowed") == 0
    assert value(text, "nvi_controller_handler_errors_total", handler="packet_in") == 0


def test_lab_status_summarises_a_controller_scrape(server: Server) -> None:
    """What `nvi lab status` shows is read from the controller's scrape, not its JSON file."""
    server.connect()
    server.first_packet(A, B.ip)
    server.first_packet(A, D.ip)
    summary = controller_summary(scrape(server))
    assert summary == {
        "nodes": 2,
        "pairs": 1,
        "packet_in": 2,
        "connected": True,
        "decisions": {
            "allowed": 1,
            "outbound": 0,
            "outbound_floating": 0,
            "outbound_replies_only": 0,
            "denied": 1,
            "refused_infrastructure": 0,
            "directory_unavailable": 0,
            "unknown_locator": 0,
        },
        "lookups": {"hit": 0, "miss": 2, "bypass": 0},
    }
