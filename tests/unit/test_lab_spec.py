"""The lab-file parser: good files load, bad files fail with one line naming the problem."""

from __future__ import annotations

import copy
import tomllib

import pytest
from click.testing import CliRunner

from nvi.cli import main
from nvi.core.errors import NviError
from nvi.lab.spec import load_lab, parse_lab
from openflow.flows import PAIR_IDLE_TIMEOUT
from tests.conftest import EXAMPLE_LAB

BASE = tomllib.loads(EXAMPLE_LAB.read_text())


def variant(**edits) -> dict:
    """The example lab with `section=[(index, key, value)]` edits applied."""
    data = copy.deepcopy(BASE)
    for section, changes in edits.items():
        for index, key, value in changes:
            data[section][index][key] = value
    return data


def error_of(data: dict) -> str:
    with pytest.raises(NviError) as caught:
        parse_lab(data, source="x.toml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_example_lab_loads() -> None:
    lab = load_lab(EXAMPLE_LAB)
    assert [c.name for c in lab.clouds] == ["east", "west", "internet"]
    assert [(s.name, s.cloud) for s in lab.servers] == [
        ("s1", "east"),
        ("s2", "east"),
        ("s3", "west"),
    ]
    assert lab.routers[0].addresses == {
        "east": "198.51.100.1",
        "west": "203.0.113.1",
        "internet": "192.0.2.1",
    }
    assert lab.server("s3").locator_pool.size == 32


def test_pool_as_range() -> None:
    lab = parse_lab(variant(servers=[(0, "locators", "198.51.100.70-198.51.100.79")]))
    assert lab.server("s1").locator_pool.size == 10


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**BASE, "colour": "blue"}, "x.toml: colour: unknown key"),
        (variant(servers=[(1, "adress", "1.2.3.4")]), "servers[1].adress (s2): unknown key"),
        (
            variant(clouds=[(1, "subnet", "198.51.100.128/25")]),
            "clouds east (198.51.100.0/24) and west (198.51.100.128/25) overlap",
        ),
        (
            variant(clouds=[(0, "subnet", "198.51.100.0/33")]),
            "clouds[0].subnet (east): '198.51.100.0/33' is not a CIDR subnet",
        ),
        (
            variant(servers=[(2, "address", "198.51.100.50")]),
            "server s3: address 198.51.100.50 is not a host address of cloud west (203.0.113.0/24)",
        ),
        (
            variant(servers=[(1, "address", "198.51.100.11")]),
            "server s2: address 198.51.100.11 is already used by server s1",
        ),
        (variant(servers=[(1, "name", "s1")]), "duplicate name 's1'"),
        (variant(servers=[(0, "name", "east")]), "duplicate name 'east'"),
        (
            variant(servers=[(0, "locators", "203.0.113.0/28")]),
            "server s1: locator pool 203.0.113.0/28 is not inside the host addresses of cloud east",
        ),
        (
            variant(servers=[(0, "locators", "198.51.100.0/27")]),
            "server s1: locator pool 198.51.100.0/27 is not inside the host addresses",
        ),
        (
            variant(servers=[(0, "locators", "198.51.100.8/29")]),
            "locator pool 198.51.100.8/29 contains server s1's address 198.51.100.11",
        ),
        (
            variant(servers=[(1, "locators", "198.51.100.64/26")]),
            "server s2: locator pool 198.51.100.64/26 overlaps server s1's locator pool",
        ),
        (
            variant(servers=[(1, "floating", "198.51.100.70-198.51.100.71")]),
            "server s2: floating pool 198.51.100.70-198.51.100.71 overlaps server s1's locator",
        ),
        (
            variant(servers=[(0, "floating", "198.51.100.96/30")]),
            "server s2: locator pool 198.51.100.96/27 overlaps server s1's floating pool",
        ),
        (
            variant(servers=[(0, "floating", "203.0.113.200-203.0.113.201")]),
            "server s1: floating pool 203.0.113.200-203.0.113.201 is not inside the host",
        ),
        (
            variant(servers=[(0, "locators", "nonsense")]),
            "servers[0].locators (s1): 'nonsense' is not a CIDR or a first-last range",
        ),
        (variant(servers=[(0, "cloud", "mars")]), "server s1: unknown cloud 'mars'"),
        (
            variant(servers=[(0, "address", "fe80::1")]),
            "servers[0].address (s1): fe80::1 is not an IPv4 address",
        ),
        (
            variant(routers=[(0, "addresses", {"east": "198.51.100.1", "west": "198.51.100.2"})]),
            "router r1: address 198.51.100.2 is not a host address of cloud west",
        ),
        ({**BASE, "name": "Demo-1"}, "name: String should match pattern"),
        ({k: v for k, v in BASE.items() if k != "servers"}, "servers: missing key"),
    ],
)
def test_bad_lab_names_the_problem(data: dict, expected: str) -> None:
    assert expected in error_of(data)


def test_toml_syntax_error_names_the_line(tmp_path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "demo"\n[[clouds]\nname = "east"\n')
    with pytest.raises(NviError, match=r"broken.toml: .*line 2"):
        load_lab(path)


def test_cli_refuses_bad_file_before_anything(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(EXAMPLE_LAB.read_text().replace('name = "s3"', 'name = "s2"'))
    result = CliRunner().invoke(main, ["lab", "up", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"nvi: lab file {path}: duplicate name 's2': clouds, routers and servers share one namespace"
    ]


def test_cli_missing_file_is_one_line(tmp_path) -> None:
    result = CliRunner().invoke(main, ["lab", "status", str(tmp_path / "none.toml")])
    assert result.exit_code == 1
    assert result.output.strip() == f"nvi: lab file {tmp_path / 'none.toml'}: not found"


def test_gateways_two_clouds() -> None:
    lab = load_lab(EXAMPLE_LAB)
    assert lab.gateways({"east"}, "s1") == [
        ("203.0.113.0/24", "198.51.100.1"),
        ("192.0.2.0/24", "198.51.100.1"),
    ]
    assert lab.gateways({"west"}, "s3") == [
        ("198.51.100.0/24", "203.0.113.1"),
        ("192.0.2.0/24", "203.0.113.1"),
    ]
    assert lab.gateways({"east", "west", "internet"}, "r1") == []


def test_gateways_chain_of_three_clouds() -> None:
    """a -r1- b -r2- c: servers route via their own router; routers reach beyond neighbours."""
    lab = parse_lab(
        {
            "name": "chain",
            "clouds": [
                {"name": "a", "subnet": "10.1.0.0/24"},
                {"name": "b", "subnet": "10.2.0.0/24"},
                {"name": "c", "subnet": "10.3.0.0/24"},
            ],
            "routers": [
                {"name": "r1", "addresses": {"a": "10.1.0.1", "b": "10.2.0.1"}},
                {"name": "r2", "addresses": {"b": "10.2.0.2", "c": "10.3.0.2"}},
            ],
            "servers": [
                {"name": "sa", "cloud": "a", "address": "10.1.0.10", "locators": "10.1.0.64/28"},
                {"name": "sc", "cloud": "c", "address": "10.3.0.10", "locators": "10.3.0.64/28"},
            ],
        }
    )
    assert lab.gateways({"a"}, "sa") == [("10.2.0.0/24", "10.1.0.1"), ("10.3.0.0/24", "10.1.0.1")]
    assert lab.gateways({"c"}, "sc") == [("10.1.0.0/24", "10.3.0.2"), ("10.2.0.0/24", "10.3.0.2")]
    assert lab.gateways({"a", "b"}, "r1") == [("10.3.0.0/24", "10.2.0.2")]
    assert lab.gateways({"b", "c"}, "r2") == [("10.1.0.0/24", "10.2.0.1")]


def test_unreachable_cloud_gets_no_route() -> None:
    data = copy.deepcopy(BASE)
    data["routers"] = []
    lab = parse_lab(data)
    assert lab.gateways({"east"}, "s1") == []


POPULATED = {
    **BASE,
    "directory": {"cloud": "east", "address": "198.51.100.2"},
    "tenants": [{"name": "red", "networks": [{"name": "net", "cidr": "10.0.0.0/24"}]}],
    "nodes": [
        {"name": "web", "tenant": "red", "network": "net", "server": "s1", "ip": "10.0.0.10"}
    ],
}


def test_tenants_and_nodes_load() -> None:
    lab = parse_lab(POPULATED)
    assert [(n.tenant, n.name, n.kind, n.ip) for n in lab.nodes] == [
        ("red", "web", "container", "10.0.0.10")
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"directory": None}, "tenants and nodes need a [directory]"),
        (
            {"nodes": [{**POPULATED["nodes"][0], "server": "s9"}]},
            "node red/web: unknown server 's9'",
        ),
        (
            {"nodes": [{**POPULATED["nodes"][0], "network": "dmz"}]},
            "node red/web: tenant 'red' has no network 'dmz' in this file",
        ),
        (
            {"nodes": [{**POPULATED["nodes"][0], "ip": "10.9.0.1"}]},
            "node red/web: 10.9.0.1 is outside net (10.0.0.0/24)",
        ),
        ({"nodes": POPULATED["nodes"] * 2}, "node red/web: declared twice"),
        ({"tenants": POPULATED["tenants"] * 2}, "duplicate tenant 'red'"),
        (
            {"tenants": [{"name": "red", "networks": [{"name": "net", "cidr": "10.0.0.0/33"}]}]},
            "tenants[0].networks[0].cidr",
        ),
        (
            {"nodes": [{**POPULATED["nodes"][0], "kind": "pod"}]},
            "nodes[0].kind (web): Input should be 'vm' or 'container'",
        ),
    ],
)
def test_bad_tenants_and_nodes_name_the_problem(change: dict, expected: str) -> None:
    data = {**POPULATED, **change}
    if data["directory"] is None:
        del data["directory"]
    assert expected in error_of(data)


def test_controller_settings_default_and_override() -> None:
    assert parse_lab(POPULATED).controller.idle_timeout == PAIR_IDLE_TIMEOUT
    lab = parse_lab({**POPULATED, "controller": {"idle_timeout": 3}})
    assert lab.controller.idle_timeout == 3
    assert "controller.idle_timeout: Input should be greater than or equal to 1" in error_of(
        {**POPULATED, "controller": {"idle_timeout": 0}}
    )
    assert "controller.idle: unknown key" in error_of({**POPULATED, "controller": {"idle": 3}})


def with_outside(address: str = "192.0.2.80", cloud: str = "internet", **extra: object) -> dict:
    """The populated lab (cloud "internet" is beyond r1) with this outside host on it."""
    data = copy.deepcopy(POPULATED)
    data["outside"] = {"cloud": cloud, "address": address, **extra}
    return data


def test_the_outside_host_loads_and_is_routed_via_the_router() -> None:
    lab = parse_lab(with_outside())
    assert lab.outside is not None and lab.outside.url == "http://192.0.2.80/"
    assert "outside" in lab.member_names()
    assert ("198.51.100.0/24", "192.0.2.1") in lab.gateways({"internet"}, "outside")
    assert ("192.0.2.0/24", "198.51.100.1") in lab.gateways({"east"}, "s1")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_outside("192.0.2.1"), "the outside host: address 192.0.2.1 is already used by"),
        (with_outside("10.0.0.80", "east"), "is not a host address of cloud east"),
        (with_outside(cloud="nowhere"), "the outside host: unknown cloud 'nowhere'"),
        (with_outside(port=0), "outside.port"),
    ],
)
def test_a_bad_outside_host_names_the_problem(data: dict, expected: str) -> None:
    assert expected in error_of(data)


def test_the_outside_host_must_be_outside_every_tenant_network() -> None:
    data = with_outside()
    data["tenants"][0]["networks"].append({"name": "wide", "cidr": "192.0.2.0/25"})
    assert "the outside host 192.0.2.80 is inside network red/wide" in error_of(data)
