"""The access link's plan and routes, and the lab's client.toml, as pure facts."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from nvi.lab import access, clientconfig
from nvi.lab.spec import load_lab, parse_lab
from tests.conftest import EXAMPLE_LAB


def test_the_link_goes_to_a_router_on_the_directorys_cloud_with_a_private_segment() -> None:
    lab = load_lab(EXAMPLE_LAB)
    link = access.plan(lab)
    assert link is not None and link.router == "r1"
    segment = ipaddress.ip_network(link.subnet)
    assert segment.prefixlen == 29 and segment.subnet_of(access.SPACE)
    assert (link.router_address, link.root_address) == (str(segment[1]), str(segment[2]))
    assert len(link.root_end) <= 15 and link.root_end == f"nvi-{lab.name}-x"
    other = access.plan(lab.model_copy(update={"name": "other"}))
    assert other is not None and other.subnet != link.subnet


def test_every_member_routes_back_to_the_segment_and_the_router_needs_no_route() -> None:
    lab = load_lab(EXAMPLE_LAB)
    link = access.plan(lab)
    assert link is not None
    routing = access.routing(lab, link)
    for server in lab.servers:
        routes = dict(routing.gateways({server.cloud}, server.name))
        assert routes[link.subnet] == lab.routers[0].addresses[server.cloud]
        assert dict(lab.gateways({server.cloud}, server.name)).items() <= routes.items()
    router = lab.routers[0]
    assert link.subnet not in dict(routing.gateways(set(router.addresses), router.name))
    assert routing.gateways({access.SEGMENT}, "root") == [
        (cloud.subnet, link.router_address) for cloud in lab.clouds
    ]


def test_a_lab_without_a_router_or_directory_has_no_link() -> None:
    lab = load_lab(EXAMPLE_LAB)
    assert access.plan(lab.model_copy(update={"routers": []})) is None
    assert access.plan(lab.model_copy(update={"directory": None})) is None
    single = parse_lab(
        {
            "name": "one",
            "clouds": [{"name": "east", "subnet": "198.51.100.0/24"}],
            "servers": [
                {
                    "name": "s1",
                    "cloud": "east",
                    "address": "198.51.100.11",
                    "locators": "198.51.100.64/30",
                }  # fmt: skip
            ],
        }
    )
    assert access.routing(single, access.plan(single)) is single


def test_the_client_config_has_a_profile_per_tenant_and_the_admin() -> None:
    text = clientconfig.render(
        "demo",
        "https://198.51.100.2:7480",
        Path("/run/nvi/labs/demo/ca.crt"),
        Path("/run/nvi/labs/demo/directory/admin.token"),
        {"red": Path("/t/red.token"), "blue": Path("/t/blue.token")},
    )
    parsed = tomllib.loads(text)
    assert parsed["default"] == "demo-blue" == clientconfig.default_profile(text)
    assert list(parsed["profiles"]) == ["demo-blue", "demo-red", "demo-admin"]
    assert parsed["profiles"]["demo-red"] == {
        "directory": ["https://198.51.100.2:7480"],
        "ca_file": "/run/nvi/labs/demo/ca.crt",
        "token_file": "/t/red.token",
    }
    assert parsed["profiles"]["demo-admin"]["token_file"].endswith("admin.token")
    alone = clientconfig.render("demo", "https://x:7480", Path("c"), Path("a"), {})
    assert clientconfig.default_profile(alone) == "demo-admin"
