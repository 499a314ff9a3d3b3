"""The OpenAPI documents of the directory and the agent: valid OpenAPI 3.1, the same as the
files shipped in docs/api/, every header and error declared, and each cross-field rule stated
in the schema exactly as the models enforce it."""

from __future__ import annotations

import itertools
import json
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel, ValidationError

from federation.models import LinkCreate, NetworkCreate, ResolveQuery
from federation.service import api as directory_api
from federation.service import openapi_document as directory_document
from hostagent.models import NodeCreate as AgentNodeCreate
from hostagent.service import api as agent_api
from hostagent.service import openapi_document as agent_document
from tests.conftest import REPO

DOCUMENTS = {"directory": directory_document, "agent": agent_document}
APIS = {"directory": directory_api, "agent": agent_api}
REGENERATE = "regenerate them with scripts/openapi (and commit docs/api/)"


@pytest.mark.parametrize("service", DOCUMENTS)
def test_the_document_is_valid_openapi(service: str) -> None:
    validate(DOCUMENTS[service]())


@pytest.mark.parametrize("service", DOCUMENTS)
def test_the_shipped_document_is_the_generated_one(service: str) -> None:
    shipped = json.loads((REPO / "docs" / "api" / f"{service}.json").read_text())
    assert shipped == DOCUMENTS[service](), f"docs/api/{service}.json is stale: {REGENERATE}"


@pytest.mark.parametrize("service", DOCUMENTS)
def test_every_operation_declares_its_headers_and_errors(service: str) -> None:
    paths = DOCUMENTS[service]()["paths"]
    for op in APIS[service].operations:
        entry = paths[op.path][op.method.lower()]
        statuses = {int(status) for status in entry["responses"]}
        headers = {p["name"]: p for p in entry["parameters"] if p["in"] == "header"}
        assert 500 in statuses, op.path
        if op.roles:
            assert {401, 403} <= statuses and entry["security"] == [{"bearerAuth": []}]
            assert "WWW-Authenticate" in entry["responses"]["401"]["headers"]
        if op.body or op.query or "{" in op.path:
            assert 422 in statuses, op.path
        if op.on_behalf:
            assert headers["X-Tenant-Token"]["required"], op.path
        for status, answer in entry["responses"].items():
            if int(status) >= 400:
                assert answer["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }


def test_the_tenant_tokens_headers_are_declared() -> None:
    """The agent's operator acting for a tenant, and the directory's server doing so."""
    agent = agent_document()["paths"]
    for path, method in (("/v1/nodes", "post"), ("/v1/nodes/{tenant}/{name}", "delete")):
        names = [p["name"] for p in agent[path][method]["parameters"] if p["in"] == "header"]
        assert names == ["X-Tenant-Token"], (path, method)
    drain = agent["/v1/drain"]["post"]["parameters"]
    assert [p["name"] for p in drain if p["required"]] == ["X-Directory-Token"]
    directory = directory_document()["paths"]
    moved = directory["/v1/tenants/{tenant}/nodes/{node}"]["patch"]["parameters"]
    assert any(p["name"] == "X-Tenant-Token" and p["required"] for p in moved)


def _accepts(schema: dict[str, Any], components: dict[str, Any], data: dict[str, Any]) -> bool:
    document = schema | {"components": {"schemas": components}}
    validator = jsonschema.Draft202012Validator(
        document, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return validator.is_valid(data)


def _valid(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def _agree(model: type[BaseModel], cases: list[dict[str, Any]], document: dict) -> None:
    components = document["components"]["schemas"]
    schema = components[model.__name__]
    for data in cases:
        assert _accepts(schema, components, data) == _valid(model, data), data


def test_resolve_query_rules_agree_with_the_schema() -> None:
    """Every combination of the six fields: the schema and the model say the same."""
    values = {
        "ip": "10.0.0.2",
        "locator": "192.0.2.7",
        "source": "0" * 32,
        "tenant": "acme",
        "network": "net",
        "source_ip": "10.0.0.3",
    }
    cases = [
        {name: values[name] for name in chosen}
        for size in range(len(values) + 1)
        for chosen in itertools.combinations(values, size)
    ]
    assert sum(_valid(ResolveQuery, case) for case in cases) == 4  # 2 destinations x 2 sources
    _agree(ResolveQuery, cases, directory_document())


def test_link_and_network_rules_agree_with_the_schema() -> None:
    document = directory_document()
    _agree(
        LinkCreate,
        [
            {"kind": "node", "ends": ["a", "b"]},
            {"kind": "node", "ends": ["a", "a"]},
            {"kind": "node", "ends": ["a"]},
            {"kind": "node", "ends": ["a", "b", "c"]},
            {"kind": "node", "a": "a", "b": "b"},
        ],
        document,
    )
    _agree(
        NetworkCreate,
        [
            {"name": "n", "cidr": "10.0.0.0/24"},
            {"name": "n", "cidr": "10.0.0.0/24", "gateway": "10.0.0.9"},
            {"name": "n", "cidr": "10.0.0.0/24", "gateway": None},
            {"name": "n", "cidr": "fd00::/64", "gateway": "fd00::1"},
            {"name": "n", "cidr": "10.0.0.300/24"},
            {"name": "n", "cidr": "10.0.0.0/31"},
            {"name": "n", "cidr": "10.0.0.0"},
        ],
        document,
    )
    # A gateway of the other family: the schema refuses it, the service too (with 422).
    for case in (
        {"name": "n", "cidr": "10.0.0.0/24", "gateway": "::1"},
        {"name": "n", "cidr": "fd00::/64", "gateway": "10.0.0.1"},
    ):
        components = document["components"]["schemas"]
        assert not _accepts(components["NetworkCreate"], components, case), case


def test_a_vm_s_limits_are_in_the_agent_s_schema() -> None:
    document = agent_document()
    components = document["components"]["schemas"]
    schema = components["NodeCreate"]
    base = {"name": "n", "tenant": "acme", "network": "web"}
    for case, accepted in (
        ({"kind": "vm", "cpus": 2, "memory_mib": 256}, True),
        ({"kind": "vm", "cpus": 0.5}, False),
        ({"kind": "vm", "cpus": 2, "memory_mib": 32}, False),  # 16 MiB is a container's floor
        ({"kind": "vm", "cpus": 65}, False),
        ({"kind": "container", "cpus": 0.5, "memory_mib": 32}, True),
        ({"cpus": 0.5}, True),  # a container, by default
    ):
        data = base | case
        assert _accepts(schema, components, data) == accepted, data
        assert _valid(AgentNodeCreate, data)  # the model's own bounds; the VM's are the driver's
