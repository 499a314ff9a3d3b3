"""The OpenAPI document is complete and self-consistent."""

from __future__ import annotations

import json
import re
from pathlib import Path

from federation.config import AuthConfig, Config, TlsConfig
from federation.service import OPENAPI, make_app


def document() -> dict:
    tls = TlsConfig(cert_file=Path("d.crt"), key_file=Path("d.key"))
    app = make_app(Config(auth=AuthConfig(admin_token_sha256=["a" * 64]), tls=tls))
    return app[OPENAPI], app


def test_every_route_is_documented_with_an_error_answer() -> None:
    spec, app = document()
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource.canonical != "/v1/openapi.json"
    }
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert routes == documented
    for ops in spec["paths"].values():
        for op in ops.values():
            errors = [status for status in op["responses"] if int(status) >= 400]
            assert "500" in errors and op["summary"], op["operationId"]


def test_every_reference_resolves() -> None:
    spec, _ = document()
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert refs and refs <= set(spec["components"]["schemas"])


def test_only_health_and_metrics_are_open() -> None:
    """Metrics carry no tenant data (docs/decisions.md), so scrapers need no credential."""
    spec, _ = document()
    open_ops = [
        path for path, ops in spec["paths"].items() for op in ops.values() if not op["security"]
    ]
    assert open_ops == ["/v1/health", "/metrics"]
