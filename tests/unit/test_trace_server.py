"""`nvi trace --config` finds the server's Open vSwitch from the OVSDB socket in its config."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from nvi.core.errors import NviError
from nvi.trace import ovs_rundir, vswitchd_target
from nvi.trace_command import trace_command


def test_the_packaged_server_is_reached_through_vswitchds_pid_file(tmp_path: Path) -> None:
    assert ovs_rundir("unix:/run/openvswitch/db.sock") == Path("/run/openvswitch")
    assert vswitchd_target(f"unix:{tmp_path}/db.sock") == "ovs-vswitchd"


def test_a_fixed_control_socket_next_to_the_database_is_used(tmp_path: Path) -> None:
    (tmp_path / "ovs-vswitchd.ctl").touch()
    assert vswitchd_target(f"unix:{tmp_path}/db.sock") == str(tmp_path / "ovs-vswitchd.ctl")


@pytest.mark.parametrize("ovsdb", ["tcp:127.0.0.1:6640", "unix:"])
def test_a_database_not_on_this_machine_is_refused(ovsdb: str) -> None:
    with pytest.raises(NviError, match="not a unix: socket"):
        ovs_rundir(ovsdb)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "c.toml", "lab.toml", "n", "10.0.0.1"], "with --config, give NODE"),
        (["n", "10.0.0.1"], "give LAB_FILE NODE DESTINATION_IP, or --config"),
    ],
)
def test_a_lab_file_or_a_config_not_both(args: list[str], message: str) -> None:
    result = CliRunner().invoke(trace_command, args)
    assert result.exit_code == 1 and isinstance(result.exception, NviError)
    assert str(result.exception).startswith(message)
