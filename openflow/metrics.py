"""The controller's Prometheus metrics, served by a small aiohttp app on the controller's
asyncio thread (the thread that changes the counters, so a scrape reads a consistent view).

Counters are read at scrape time from what the controller already keeps (`stats`, `pairs`,
`nodes`) and from the resolver's cache tallies; only decision latencies are observed as they
happen, into a histogram. Labels are fixed words: no tenant, address or locator.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from federation.client import CachedResolver
from nvi.core.metrics import METRICS_PATH, metrics_handler
from openflow.controller import Controller

# controller.stats key -> the outcome of a first-packet decision it counts
OUTCOMES = {
    "conversations": "allowed",
    "outbound": "outbound",
    "outbound_floating": "outbound_floating",
    "outbound_replies_only": "outbound_replies_only",
    "denied": "denied",
    "refused_infrastructure": "refused_infrastructure",
    "directory_unavailable": "directory_unavailable",
    "dropped_unknown_locator": "unknown_locator",
}
ERRORS = "errors_"
DNS = "dns_"  # controller.stats key prefix -> the answer given to a node's DNS query
DNS_ANSWERS = ("answered", "nxdomain", "servfail", "notimp", "dropped")
# A decision is a directory lookup (cached: microseconds; asked: a round trip) plus flow mods.
DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ObservedDurations(list[float]):
    """A controller's list of decision times (ms) that also feeds each one to a histogram:
    the controller keeps its short window, Prometheus gets every observation."""

    def __init__(self, histogram: Histogram, kept: Iterable[float]) -> None:
        super().__init__(kept)
        self.histogram = histogram

    def append(self, milliseconds: float) -> None:
        self.histogram.observe(milliseconds / 1000)
        super().append(milliseconds)


class ControllerMetrics(Collector):
    def __init__(self, controller: Controller, resolver: CachedResolver) -> None:
        self.controller = controller
        self.resolver = resolver
        self.registry = CollectorRegistry()
        decisions = Histogram(
            "nvi_controller_decision_seconds",
            "Time from a conversation's first packet to its flows (or drop), by direction",
            ["direction"],
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        for direction, kept in controller.decision_ms.items():
            controller.decision_ms[direction] = ObservedDurations(decisions.labels(direction), kept)
        self.registry.register(self)

    def collect(self) -> list[Metric]:
        stats = self.controller.stats
        packet_ins = CounterMetricFamily(
            "nvi_controller_packet_ins", "Packets the switch sent to the controller"
        )
        packet_ins.add_metric([], stats["packet_in"])
        decisions = CounterMetricFamily(
            "nvi_controller_decisions",
            "First-packet decisions by outcome (directory_unavailable: a short backoff drop)",
            labels=["outcome"],
        )
        for key, outcome in OUTCOMES.items():
            decisions.add_metric([outcome], stats[key])
        errors = CounterMetricFamily(
            "nvi_controller_handler_errors",
            "Exceptions caught (logged, counted, survived) by handler",
            labels=["handler"],
        )
        events = CounterMetricFamily(
            "nvi_controller_events",
            "Other controller events (connects, DHCP replies, flows removed, changes applied, "
            "conversations revoked, base flows added or removed, unexpected packets)",
            labels=["event"],
        )
        for key, count in sorted(stats.items()):
            if key.startswith(ERRORS):
                errors.add_metric([key.removeprefix(ERRORS)], count)
            elif key not in OUTCOMES and key != "packet_in" and not key.startswith(DNS):
                events.add_metric([key], count)
        names = CounterMetricFamily(
            "nvi_controller_dns_queries",
            "Nodes' DNS queries by answer: answered (a node of the tenant), nxdomain, servfail "
            "(directory unavailable), notimp, or dropped (malformed)",
            labels=["answer"],
        )
        for answer in DNS_ANSWERS:
            names.add_metric([answer], stats[DNS + answer])
        lookups = CounterMetricFamily(
            "nvi_controller_directory_lookups",
            "Directory lookups by cache result: hit, miss, or bypass (change stream not "
            "followed, so nothing is cached)",
            labels=["cache"],
        )
        for result in ("hit", "miss", "bypass"):
            lookups.add_metric([result], self.resolver.lookups[result])
        return [
            packet_ins,
            decisions,
            errors,
            events,
            names,
            lookups,
            _gauge("nvi_controller_pairs", "Conversations installed", len(self.controller.pairs)),
            _gauge(
                "nvi_controller_local_nodes", "Nodes on this switch", len(self.controller.nodes)
            ),
            _gauge(
                "nvi_controller_switch_connected",
                "1 while the switch is connected",
                self.controller.channel is not None,
            ),
            _gauge(
                "nvi_controller_lookup_cache_entries", "Cached answers", len(self.resolver.cache)
            ),
            _gauge(
                "nvi_controller_change_stream_live",
                "1 while the directory's change stream is followed (and the cache used)",
                self.resolver.live,
            ),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """`GET /metrics` on host:port, on the running loop; cleaned up with the runner."""
    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics_handler(registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
