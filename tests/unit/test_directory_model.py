"""Validation of directory records, request bodies and the config file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from federation.config import (
    AuthConfig,
    Config,
    StorageConfig,
    TlsConfig,
    load_config,
    render_config,
)
from federation.models import (
    LinkCreate,
    NetworkCreate,
    NodeCreate,
    NodeUpdate,
    ResolveQuery,
    ServerEnroll,
)
from nvi.core.errors import NviError
from nvi.core.model import Link, LinkKind, Network, Server

NOW = datetime.now(UTC)

NODE = {"name": "web", "kind": "vm", "network": "front", "locator": "192.0.2.1"}


@pytest.mark.parametrize("name", ["a", "web-1", "x" * 63, "0"])
def test_names_are_dns_labels(name: str) -> None:
    assert NetworkCreate(name=name, cidr="10.0.0.0/24").name == name


@pytest.mark.parametrize("name", ["", "Web", "-a", "a-", "a_b", "x" * 64, "a/b", "a:b", "é"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        NetworkCreate(name=name, cidr="10.0.0.0/24")


@pytest.mark.parametrize(
    ("cidr", "canonical"), [("10.0.0.0/24", "10.0.0.0/24"), ("fd00::/64", "fd00::/64")]
)
def test_cidrs_are_canonical(cidr: str, canonical: str) -> None:
    assert NetworkCreate(name="n", cidr=cidr).cidr == canonical


@pytest.mark.parametrize("cidr", ["10.0.0.1/24", "10.0.0.0/33", "10.0.0.0", "x", "10.0.0.0/31"])
def test_bad_cidrs_are_refused(cidr: str) -> None:
    with pytest.raises(ValidationError):
        NetworkCreate(name="n", cidr=cidr)


def test_addresses_and_macs_are_canonical() -> None:
    node = NodeCreate(**NODE, ip="10.0.0.2", mac="AA-BB-CC-DD-EE-F0")
    assert node.mac == "aa:bb:cc:dd:ee:f0"
    assert NodeCreate(**NODE | {"locator": "2001:DB8::1"}).locator == "2001:db8::1"
    for bad in (
        {"mac": "01:00:5e:00:00:01"},
        {"mac": "00:00:00:00:00:00"},
        {"ip": "10.0.0"},
        {"ip": "010.0.0.1"},
        {"kind": "pod"},
        {"extra": 1},
        {"server": "s1"},  # the directory takes the server from the publishing credential
    ):
        with pytest.raises(ValidationError):
            NodeCreate(**NODE | bad)


def test_usable_addresses_exclude_network_broadcast_and_gateway() -> None:
    network = Network(tenant="t", name="n", cidr="10.0.0.0/29", gateway="10.0.0.1")
    usable = [f"10.0.0.{i}" for i in range(8) if network.usable(f"10.0.0.{i}")]
    assert usable == [f"10.0.0.{i}" for i in range(2, 7)]
    assert not network.usable("10.0.1.2")


@given(st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=5))
def test_a_pair_has_one_link_id_whichever_order(a: str, b: str) -> None:
    assert Link.make_id(LinkKind.NODE, a, b) == Link.make_id(LinkKind.NODE, b, a)


def test_cross_field_rules() -> None:
    with pytest.raises(ValidationError, match="different"):
        LinkCreate.model_validate({"kind": "network", "ends": ["x", "x"]})
    with pytest.raises(ValidationError, match="at least 2"):
        LinkCreate.model_validate({"kind": "network", "ends": ["x"]})
    with pytest.raises(ValidationError, match="locator"):
        NodeUpdate()
    with pytest.raises(ValidationError, match="extra"):
        NodeUpdate(locator="192.0.2.9", server="s2")
    with pytest.raises(ValidationError, match="not both"):
        ResolveQuery(ip="10.0.0.2", source="0" * 32, tenant="t")
    with pytest.raises(ValidationError, match="name the source"):
        ResolveQuery(ip="10.0.0.2", tenant="t", network="n")
    assert ResolveQuery(ip="10.0.0.2", tenant="t", network="n", source_ip="10.0.0.3")


def config(**storage) -> Config:  # noqa: ANN003
    return Config(
        auth=AuthConfig(admin_token_sha256=["a" * 64]),
        storage=StorageConfig(**storage),
        tls=TlsConfig(cert_file=Path("d.crt"), key_file=Path("d.key")),
    )


def test_a_rendered_config_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(render_config(config(path=Path("x.db"))))
    loaded = load_config(path)
    assert loaded.storage.path == tmp_path / "x.db"  # relative to the file
    assert loaded.auth.admin_token_sha256 == ["a" * 64]
    assert (loaded.tls.cert_file, loaded.tls.key_file) == (tmp_path / "d.crt", tmp_path / "d.key")
    path.write_text(render_config(config(backend="etcd", endpoints=["http://127.0.0.1:2379"])))
    assert load_config(path).storage.endpoints == ["http://127.0.0.1:2379"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("port = 1\n", "auth: Field required"),
        ('[auth]\nadmin_token_sha256 = ["nothex"]\n', "admin_token_sha256"),
        (
            f'[storage]\nbackend = "etcd"\n[tls]\ncert_file = "c"\nkey_file = "k"\n'
            f'[auth]\nadmin_token_sha256 = ["{"a" * 64}"]\n',
            "endpoints",
        ),
        ("port = \n", "invalid config"),
        (f'colour = 1\n[auth]\nadmin_token_sha256 = ["{"a" * 64}"]\n', "colour"),
    ],
)
def test_bad_configs_say_why(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(NviError, match=reason):
        load_config(path)
    with pytest.raises(NviError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_server_pools_are_kept_as_ranges_and_bad_ones_refused() -> None:
    enroll = ServerEnroll(name="s1", pools=["198.51.100.64/30", " 192.0.2.10 - 192.0.2.12"])
    assert enroll.pools == ["198.51.100.64-198.51.100.67", "192.0.2.10-192.0.2.12"]
    for bad in ([], ["2001:db8::/126"], ["10.0.0.300/30"], ["nonsense"]):
        with pytest.raises(ValidationError):
            ServerEnroll(name="s1", pools=bad)


def test_a_server_holds_only_addresses_in_its_pools() -> None:
    server = Server(name="s1", pools=["198.51.100.64/30", "192.0.2.10-192.0.2.12"], created=NOW)
    assert server.holds("198.51.100.67") and server.holds("192.0.2.11")
    assert not server.holds("198.51.100.68") and not server.holds("192.0.2.9")
