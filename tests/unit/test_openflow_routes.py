"""Static underlay routes in the controller config: next hops without the kernel's table."""

from __future__ import annotations

import asyncio

import pytest

from nvi.core.errors import NviError
from openflow.service import NextHops, Route, load_config, static_gateway

CONFIG = """
address = "198.51.100.11"
directory = "http://127.0.0.1:7480"
token_file = "server.token"
ovsdb = "unix:/run/nvi/mininet/nm0001/ovs/db.sock"
"""
ROUTES = [
    Route(prefix="198.51.100.0/24"),
    Route(prefix="203.0.113.0/24", via="198.51.100.1"),
    Route(prefix="203.0.113.128/25", via="198.51.100.2"),
]


@pytest.mark.parametrize(
    ("destination", "hop"),
    [
        ("198.51.100.64", "198.51.100.64"),  # on-link: the destination answers ARP itself
        ("203.0.113.64", "198.51.100.1"),
        ("203.0.113.200", "198.51.100.2"),  # the longest prefix wins, as in the kernel
    ],
)
def test_static_next_hop(destination: str, hop: str) -> None:
    assert static_gateway(ROUTES, destination) == hop


def test_no_static_route_is_an_error_not_a_guess() -> None:
    with pytest.raises(LookupError, match="no underlay route to 192.0.2.9"):
        static_gateway(ROUTES, "192.0.2.9")


def test_next_hops_with_routes_never_ask_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def kernel(destination: str) -> str:
        raise AssertionError(f"asked the kernel about {destination}")

    monkeypatch.setattr("openflow.service._route_gateway", kernel)
    hops = NextHops(routes=ROUTES)
    assert asyncio.run(hops("203.0.113.64")) == "198.51.100.1"
    with pytest.raises(LookupError):
        asyncio.run(hops("192.0.2.9"))


def test_routes_in_the_config_file(tmp_path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(
        CONFIG
        + '[[routes]]\nprefix = "198.51.100.0/24"\n'
        + '[[routes]]\nprefix = "0.0.0.0/0"\nvia = "198.51.100.1"\n'
    )
    routes = load_config(path).routes
    assert [(str(r.prefix), r.via and str(r.via)) for r in routes] == [
        ("198.51.100.0/24", None),
        ("0.0.0.0/0", "198.51.100.1"),
    ]
    path.write_text(CONFIG)
    assert load_config(path).routes == []  # the default: the kernel's routing table


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ('prefix = "198.51.100.1/24"', "routes.0.prefix"),  # host bits set: not a prefix
        ('prefix = "198.51.100.0/24"\nvia = "fe80::1"', "routes.0.via"),
        ('prefix = "198.51.100.0/24"\ndev = "eth0"', "routes.0.dev: Extra inputs"),
    ],
)
def test_bad_route_is_one_line(tmp_path, route: str, expected: str) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(CONFIG + "[[routes]]\n" + route + "\n")
    with pytest.raises(NviError) as caught:
        load_config(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
