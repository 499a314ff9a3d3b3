"""Whether the lab offers VMs depends on a libvirtd that answers, not on files it left."""

from __future__ import annotations

import socket
from pathlib import Path

from nvi.lab.agents import _accepts_connections


def test_a_listening_socket_accepts(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        assert _accepts_connections(path)


def test_a_socket_file_left_by_a_dead_daemon_does_not(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
    assert path.exists()
    assert not _accepts_connections(path)


def test_no_socket_file_does_not(tmp_path: Path) -> None:
    assert not _accepts_connections(tmp_path / "missing.sock")
