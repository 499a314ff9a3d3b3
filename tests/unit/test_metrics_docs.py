"""The dashboard and docs/monitoring.md name only metrics the services export, so a renamed
metric cannot leave an empty Grafana panel behind."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from federation.client import CachedResolver
from federation.metrics import DirectoryMetrics
from hostagent.metrics import AgentMetrics
from openflow.metrics import ControllerMetrics
from tests.conftest import REPO
from tests.unit.test_openflow_controller import A, B, Directory, Server

SUFFIXES = {
    "counter": ["_total"],
    "gauge": [""],
    "histogram": ["_bucket", "_count", "_sum", ""],
    "info": ["_info"],
}
NAME = re.compile(r"\bnvi_[a-z_]+\b")


def exported(registry: CollectorRegistry) -> set[str]:
    return {
        family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]
    }


def every_metric() -> set[str]:
    agent = AgentMetrics()
    agent.count_nodes(list, ["container"])
    server = Server(Directory([A, B]), {"a": A})
    resolver = CachedResolver(server.directory)  # type: ignore[arg-type]
    controller = ControllerMetrics(server.controller, resolver)
    return set().union(*(exported(m.registry) for m in (DirectoryMetrics(), agent, controller)))


def test_the_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana" / "nvi.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in NAME.findall(target["expr"])
    }
    assert queried and queried <= every_metric(), queried - every_metric()


def test_monitoring_doc_names_only_exported_metrics() -> None:
    named = set(NAME.findall((REPO / "docs" / "monitoring.md").read_text()))
    assert named and named <= every_metric(), named - every_metric()
