"""The OVS port contract: what a node port's external_ids say, read back the same way by
every side (agent, controller, lab, tests)."""

from __future__ import annotations

import json
import shlex

import pytest

from nvi.core.ports import (
    AGENT,
    KEYS,
    NAME,
    AgentPort,
    NodePort,
    vsctl_rows,
    vsctl_set_args,
)

PORT = NodePort(
    node_id="n-1",
    tenant="acme",
    network="web",
    ip="10.1.0.2",
    cidr="10.1.0.0/24",
    gateway="10.1.0.1",
    locator="198.51.100.64",
    mac="52:54:00:aa:bb:cc",
)


def test_node_port_round_trip() -> None:
    ids = PORT.external_ids()
    assert set(ids) == set(KEYS)
    assert NodePort.from_external_ids(ids) == PORT


def test_the_mac_is_read_lower_case() -> None:
    ids = PORT.external_ids() | {"attached-mac": "52:54:00:AA:BB:CC"}
    assert NodePort.from_external_ids(ids) == PORT


@pytest.mark.parametrize("key", KEYS)
def test_a_port_missing_any_key_is_no_node(key: str) -> None:
    ids = PORT.external_ids()
    assert NodePort.from_external_ids({k: v for k, v in ids.items() if k != key}) is None
    assert NodePort.from_external_ids(ids | {key: ""}) is None


def test_agent_identity_round_trip_beside_the_node_keys() -> None:
    owner = AgentPort(agent="a-1", node="local-7", name="web1")
    ids = owner.external_ids() | PORT.external_ids()
    assert AgentPort.from_external_ids(ids) == owner
    assert NodePort.from_external_ids(ids) == PORT
    assert ids[NAME] == "web1"


def test_a_port_no_agent_made_has_no_owner() -> None:
    assert AgentPort.from_external_ids(PORT.external_ids()) is None
    assert AgentPort.from_external_ids({AGENT: "a-1"}) is None


def test_vsctl_arguments_quote_keys_and_values() -> None:
    args = vsctl_set_args({"nvi-cidr": "10.1.0.0/24", "attached-mac": "52:54:00:aa:bb:cc"})
    assert args == [
        'external_ids:"nvi-cidr"="10.1.0.0/24"',
        'external_ids:"attached-mac"="52:54:00:aa:bb:cc"',
    ]
    assert shlex.split(" ".join(map(shlex.quote, args))) == args  # survives a shell line


def test_vsctl_rows_decode_ovsdb_json() -> None:
    """As `ovs-vsctl --format=json --columns=name,ofport,ifindex,external_ids,_uuid list
    Interface` prints them: maps, empty sets, atoms and uuids."""
    answer = json.dumps(
        {
            "headings": ["name", "ofport", "ifindex", "external_ids", "_uuid"],
            "data": [
                [
                    "nv0123456789",
                    3,
                    17,
                    ["map", sorted(PORT.external_ids().items())],
                    ["uuid", "0b9a4c67-0000-0000-0000-000000000001"],
                ],
                ["uplink", 1, ["set", []], ["map", []], ["uuid", "u-2"]],
            ],
        }
    )
    node, uplink = vsctl_rows(answer)
    assert NodePort.from_external_ids(node["external_ids"]) == PORT
    assert (node["name"], node["ofport"], node["ifindex"]) == ("nv0123456789", 3, 17)
    assert node["_uuid"] == "0b9a4c67-0000-0000-0000-000000000001"
    assert uplink["ifindex"] == [] and uplink["external_ids"] == {}
