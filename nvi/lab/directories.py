"""Directory processes on this machine: etcd members and `nvi directory serve`, started and
stopped by PID. The tests, the benchmark and the lab use these to run real clusters on loopback.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from federation.config import AuthConfig, Config, StorageConfig, TlsConfig, render_config
from nvi.core.tls import KeyPair, client_context, ensure_ca, ensure_certificate
from nvi.core.tokens import new_token, token_hash

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float = 15, what: str = "condition") -> None:
    """Poll `check` (connection errors count as "not yet") until true, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def http_json(url: str, context: ssl.SSLContext | None = None) -> dict | None:
    """The JSON body of a 200 answer, or None if there is none (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as reply:
            return json.loads(reply.read()) if reply.status == 200 else None
    except (OSError, ValueError):
        return None


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its PID."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    process: subprocess.Popen | None = None


@dataclass(frozen=True)
class EtcdTls:
    """Client TLS of a cluster on loopback: every member serves `member` and wants a client
    certificate from the same CA, such as `client`."""

    ca_file: Path
    member: KeyPair
    client: KeyPair

    @classmethod
    def make(cls, folder: Path) -> EtcdTls:
        ca, _ = ensure_ca(folder, "etcd test CA")
        # etcd's JSON gateway dials its own gRPC port with the member's certificate as a client.
        member, _ = ensure_certificate(
            ca, folder, "member", ["127.0.0.1", "localhost"], client=True
        )
        client, _ = ensure_certificate(ca, folder, "client", [], client=True)
        return cls(ca.cert_file, member, client)

    def arguments(self) -> list[str]:
        return [
            "--cert-file",
            str(self.member.cert_file),
            "--key-file",
            str(self.member.key_file),
            "--trusted-ca-file",
            str(self.ca_file),
            "--client-cert-auth",
        ]


@dataclass
class EtcdCluster:
    members: list[EtcdMember]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    tls: EtcdTls | None = None

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.members]

    def storage(self, prefix: str) -> StorageConfig:
        """A directory's storage section for this cluster, under its own key prefix."""
        tls = self.tls
        return StorageConfig(
            backend="etcd",
            endpoints=self.endpoints,
            prefix=prefix,
            ca_file=tls.ca_file if tls else None,
            cert_file=tls.client.cert_file if tls else None,
            key_file=tls.client.key_file if tls else None,
        )

    def start(self, member: EtcdMember) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        member.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(member.data_dir.parent / f"{member.name}.log", "ab")  # noqa: SIM115
        member.process = subprocess.Popen(
            [
                ETCD,
                "--name",
                member.name,
                "--data-dir",
                str(member.data_dir),
                "--listen-client-urls",
                member.client_url,
                "--advertise-client-urls",
                member.client_url,
                "--listen-peer-urls",
                member.peer_url,
                "--initial-advertise-peer-urls",
                member.peer_url,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                self.token,
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "10000",
                "--log-level",
                "warn",
                "--logger",
                "zap",
                *(self.tls.arguments() if self.tls else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def healthy(self, member: EtcdMember) -> bool:
        tls = self.tls
        context = (
            client_context(tls.ca_file, tls.client.cert_file, tls.client.key_file) if tls else None
        )
        return (http_json(member.client_url + "/health", context) or {}).get("health") == "true"

    def stop_all(self) -> None:
        for member in self.members:
            if member.process:
                stop(member.process)


def start_etcd_cluster(root: Path, size: int = 3, tls: bool = False) -> EtcdCluster:
    """`size` members on loopback; with `tls`, clients speak HTTPS with a certificate from a
    CA made in ROOT/tls (members talk to each other in plain HTTP, on loopback)."""
    scheme = "https" if tls else "http"
    members = [
        EtcdMember(
            f"m{i}",
            f"{scheme}://127.0.0.1:{free_port()}",
            f"http://127.0.0.1:{free_port()}",
            root / f"m{i}",
        )
        for i in range(size)
    ]
    cluster = EtcdCluster(members, tls=EtcdTls.make(root / "tls") if tls else None)
    try:
        for member in members:
            cluster.start(member)
        for member in members:
            wait_until(functools.partial(cluster.healthy, member), 30, f"etcd member {member.name}")
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


@dataclass
class Credentials:
    """The directory operator's; servers and tenants get theirs from the directory."""

    admin: str = field(default_factory=new_token)

    def auth(self) -> AuthConfig:
        return AuthConfig(admin_token_sha256=[token_hash(self.admin)])


@dataclass
class ServiceProcess:
    """`nvi directory serve` as a process of its own, with a config from `write_config` (or
    `nvi directory init`): its CA is next to the config file."""

    config_path: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.config_path.parent / "ca.crt"

    def start(self) -> None:
        log = open(self.config_path.with_suffix(".log"), "ab")  # noqa: SIM115
        self.process = process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from nvi.cli import main; main()",
                "directory",
                "serve",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            if process.poll() is not None:
                log_text = self.config_path.with_suffix(".log").read_text()[-2000:]
                raise RuntimeError(f"the directory service exited: {log_text}")
            return http_json(self.url + "/v1/health", client_context(self.ca_file)) is not None

        wait_until(ready, 30, "the directory service")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process:
            stop(self.process, sig)


def write_config(path: Path, credentials: Credentials, storage: StorageConfig, **settings) -> int:  # noqa: ANN003
    """Write a config file the way an operator would, with a certificate for 127.0.0.1 from a
    CA next to it (made if missing); returns the chosen port."""
    port = free_port()
    ca, _ = ensure_ca(path.parent)
    certificate, _ = ensure_certificate(ca, path.parent, "directory", ["127.0.0.1"])
    tls = TlsConfig(cert_file=certificate.cert_file, key_file=certificate.key_file)
    config = Config(port=port, auth=credentials.auth(), storage=storage, tls=tls, **settings)
    path.write_text(render_config(config))
    return port
