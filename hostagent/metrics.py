"""The agent's Prometheus metrics, one registry per agent.

Node counts are read from the state at scrape time, so they can never drift from the rows.
Labels are fixed words (kind, phase, desired state, operation, outcome): never a tenant or
node name, so a scrape reveals this server's load, not its tenants.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostagent.models import Desired, NodeInfo, Phase
from nvi.core.metrics import HttpMetrics

# Creating a container takes a fraction of a second, a VM (or building an image) seconds.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.operations = Histogram(
            "nvi_agent_operation_duration_seconds",
            "Time to create or delete a node, by kind and outcome (ok, error)",
            ["operation", "kind", "outcome"],
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )
        self.reconciliations = Counter(
            "nvi_agent_reconciliations", "Reconciliation passes run", registry=self.registry
        )
        self.repairs = Counter(
            "nvi_agent_reconcile_repairs",
            "Repairs reconciliation made (re-created nodes, re-plugged ports, orphans removed, "
            "interrupted operations finished)",
            registry=self.registry,
        )
        self.announcements = Counter(
            "nvi_agent_catalogue_announcements",
            "Announcements of this server in the directory's catalogue, by outcome (ok, error)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "error"):
            self.announcements.labels(outcome)

    @contextmanager
    def operation(self, name: str, kind: str) -> Iterator[None]:
        """Time one create or delete; an exception counts as an error outcome."""
        started, outcome = time.perf_counter(), "error"
        try:
            yield
            outcome = "ok"
        finally:
            self.operations.labels(name, kind, outcome).observe(time.perf_counter() - started)

    def count_nodes(self, nodes: Callable[[], list[NodeInfo]], kinds: Iterable[str]) -> None:
        """Export node counts by kind, phase and desired state, read from `nodes` per scrape."""
        self.registry.register(NodeCounts(nodes, list(kinds)))


class NodeCounts(Collector):
    def __init__(self, nodes: Callable[[], list[NodeInfo]], kinds: list[str]) -> None:
        self.nodes = nodes
        self.kinds = kinds

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        tally = Tally((str(n.kind), str(n.phase), str(n.desired)) for n in self.nodes())
        family = self._family()
        for kind in sorted({*self.kinds, *(k for k, _, _ in tally)}):
            for phase in Phase:
                for desired in Desired:
                    key = (kind, str(phase), str(desired))
                    family.add_metric(list(key), tally[key])
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "nvi_agent_nodes",
            "Nodes on this server by kind, phase (creating, ready, deleting) and desired state",
            labels=["kind", "phase", "desired"],
        )
