"""The controller's config file: only this server's facts; bad files fail in one line."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner

from nvi.cli import main
from nvi.core.errors import NviError
from openflow.flows import PAIR_IDLE_TIMEOUT
from openflow.service import (
    ControllerConfig,
    Route,
    directory_addresses,
    load_config,
    render_config,
)

GOOD = """
address = "198.51.100.11"
directory = "http://198.51.100.2:7480"
token_file = "server.token"
ovsdb = "unix:/run/nvi/labs/demo/s1/db.sock"
"""


def test_relative_paths_are_taken_from_the_file(tmp_path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.token_file == tmp_path / "server.token"
    assert config.state_dir == tmp_path
    assert (config.listen_host, config.listen_port, config.uplink) == ("127.0.0.1", 6653, "uplink")
    assert (config.idle_timeout, config.infrastructure) == (PAIR_IDLE_TIMEOUT, [])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "idle_timeout": 3,
            "infrastructure": ["198.51.100.1/32", "10.9.0.0/16"],
            "routes": [
                Route(prefix="198.51.100.0/24"),
                Route(prefix="0.0.0.0/0", via="198.51.100.1"),
            ],
            "listen_port": 6654,
        },
    ],
    ids=["defaults", "everything"],
)
def test_rendered_config_loads_back_as_the_same_config(tmp_path: Path, extra: dict) -> None:
    config = ControllerConfig(
        address="198.51.100.11",
        directory="http://198.51.100.2:7480",
        token_file=Path("server.token"),
        ovsdb="unix:/run/nvi/labs/demo/s1/db.sock",
        **extra,
    )
    path = tmp_path / "controller.toml"
    path.write_text(render_config(config))
    loaded = load_config(path)
    expected = config.model_copy(
        update={"token_file": tmp_path / "server.token", "state_dir": tmp_path}
    )
    assert loaded == expected
    path.write_text(render_config(loaded))  # absolute paths stay what they are
    assert load_config(path) == expected


def test_directory_address_comes_from_its_url() -> None:
    assert asyncio.run(directory_addresses("http://198.51.100.2:7480")) == [
        ipaddress.IPv4Network("198.51.100.2/32")
    ]
    assert asyncio.run(directory_addresses("https://localhost:7480/")) == [
        ipaddress.IPv4Network("127.0.0.1/32")
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + 'peers = ["198.51.100.12"]\n', "peers: Extra inputs are not permitted"),
        (GOOD + "idle_timeout = 0\n", "idle_timeout: Input should be greater than or equal to 1"),
        (GOOD + 'infrastructure = ["198.51.100.1/24"]\n', "infrastructure.0"),
        (GOOD.replace('address = "198.51.100.11"\n', ""), "address: Field required"),
        (
            GOOD + "listen_port = 70000\n",
            "listen_port: Input should be less than or equal to 65535",
        ),
        ("address = \n", "invalid controller config"),
    ],
)
def test_bad_config_is_one_line(tmp_path, text: str, expected: str) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(text)
    with pytest.raises(NviError) as caught:
        load_config(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_cli_reports_a_missing_config(tmp_path) -> None:
    result = CliRunner().invoke(main, ["controller", "serve", "--config", str(tmp_path / "x.toml")])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"nvi: cannot read controller config {tmp_path / 'x.toml'}: No such file or directory"
    )
