"""Prometheus metrics for NVI's REST services: request counts and latencies per route, and the
`GET /metrics` handler. Each service instance owns its registry (never the process-global
default one), so several services in one process, as in the tests, keep separate counters.

Labels are route templates (`/v1/nodes/{tenant}/{name}`), methods and statuses: never path
values, so no tenant, node or address reaches a metric (docs/decisions.md).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

UNMATCHED = "unmatched"
METRICS_PATH = "/metrics"


class HttpMetrics:
    """Request counters and a latency histogram, filled by `middleware`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "nvi_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "nvi_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            registry=registry,
        )

    def middleware(self) -> Middleware:
        """Outermost middleware: it sees the status the client gets (after JSON errors)."""

        @web.middleware
        async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as error:
                status = error.status
                raise
            finally:
                route = _route(request)
                if route != METRICS_PATH:
                    self.requests.labels(route, request.method, str(status)).inc()
                    self.latency.labels(route, request.method).observe(
                        time.perf_counter() - started
                    )

        return measure


def _route(request: web.Request) -> str:
    """The matched route's template, so label values stay few and carry no request data."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def openapi_path() -> dict[str, Any]:
    """The `/metrics` entry of a service's OpenAPI document, beside the JSON operations."""
    return {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text format; no credentials, no tenant data)",
            "parameters": [],
            "security": [],
            "responses": {
                "200": {
                    "description": "The service's metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "500": {
                    "description": "An unexpected failure; the service's log says more",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
    }


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """`GET /metrics`: the registry in Prometheus' text format."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics
