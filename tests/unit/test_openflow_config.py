"""The controller's config file: only this server's facts; bad files fail in one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nvi.cli import main
from nvi.errors import NviError
from openflow.service import load_config

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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + 'peers = ["198.51.100.12"]\n', "peers: Extra inputs are not permitted"),
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
