"""Fixtures for the directory tests: a real 3-member etcd cluster on loopback, stores of both
backends, the service in-process on a loopback port, and the service as its own process; the
service speaks HTTPS with a certificate from a CA made for the session.

Test modules use them with `pytest_plugins = ["integration.directory_fixtures"]`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from federation.client import DirectoryClient
from federation.config import Config, StorageConfig, TlsConfig
from federation.directory import Directory
from federation.service import make_app, open_store
from federation.storage import Store
from nvi.core.tls import KeyPair, client_context, ensure_ca, ensure_certificate, server_context
from nvi.lab.directories import (
    Credentials,
    EtcdCluster,
    ServiceProcess,
    free_port,
    start_etcd_cluster,
    write_config,
)


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One cluster for the session; each test gets its own key prefix in it."""
    cluster = start_etcd_cluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop_all()


@pytest.fixture(params=["sqlite", "etcd"])
def storage_config(request: pytest.FixtureRequest, tmp_path: Path) -> StorageConfig:
    if request.param == "sqlite":
        return StorageConfig(backend="sqlite", path=tmp_path / "directory.db")
    cluster = request.getfixturevalue("etcd_cluster")
    prefix = f"/test/{uuid.uuid4().hex}/"
    return StorageConfig(backend="etcd", endpoints=cluster.endpoints, prefix=prefix)


@pytest.fixture
async def store(storage_config: StorageConfig) -> AsyncIterator[Store]:
    store = open_store(storage_config)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def directory(store: Store) -> AsyncIterator[Directory]:
    directory = Directory(store)
    await directory.start()
    yield directory
    await directory.stop()


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The session's CA, and the certificate it gives the service on 127.0.0.1."""
    return ensure_ca(tmp_path_factory.mktemp("ca"))[0]


@pytest.fixture(scope="session")
def service_tls(tls_ca: KeyPair, tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    folder = tmp_path_factory.mktemp("service-tls")
    files, _ = ensure_certificate(tls_ca, folder, "directory", ["127.0.0.1"])
    return TlsConfig(cert_file=files.cert_file, key_file=files.key_file)


@dataclass
class Service:
    url: str
    credentials: Credentials
    audit_log: Path
    ca_file: Path
    servers: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None, tenant_token: str | None = None) -> DirectoryClient:
        return DirectoryClient(self.url, token, tenant_token=tenant_token, ca_file=self.ca_file)

    async def enroll(self, name: str, *pools: str, floating: tuple[str, ...] = ()) -> str:
        """Enroll a server as the directory's operator does; returns its credential."""
        async with self.client(self.credentials.admin) as admin:
            self.servers[name] = (await admin.enroll_server(name, list(pools), floating)).token
        return self.servers[name]

    async def raw(
        self,
        method: str,
        path: str,
        token: str | None,
        tenant_token: str | None = None,
        **kwargs: Any,
    ) -> tuple[int, dict]:
        """One request as sent on the wire (the client would refuse some): (status, body)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if tenant_token:
            headers["X-Tenant-Token"] = tenant_token
        tls = client_context(self.ca_file)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
            async with session.request(method, self.url + path, headers=headers, **kwargs) as reply:
                assert reply.content_type == "application/json" or reply.status == 204
                return reply.status, (await reply.json() if reply.status != 204 else {})


@pytest.fixture
async def service(
    storage_config: StorageConfig, tmp_path: Path, tls_ca: KeyPair, service_tls: TlsConfig
) -> AsyncIterator[Service]:
    """The real aiohttp application, in this process, on a loopback port, over HTTPS."""
    credentials = Credentials()
    audit_log = tmp_path / "audit.log"
    config = Config(
        auth=credentials.auth(),
        storage=storage_config,
        tls=service_tls,
        max_wait=5,
        audit_log=audit_log,
    )
    server = TestServer(make_app(config), host="127.0.0.1", port=free_port())
    await server.start_server(ssl=server_context(service_tls.cert_file, service_tls.key_file))
    url = str(server.make_url("")).rstrip("/")
    yield Service(url, credentials, audit_log, tls_ca.cert_file)
    await server.close()


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[tuple[ServiceProcess, Credentials]]:
    """A stopped sqlite service process; the test starts (and may kill) it."""
    credentials = Credentials()
    storage = StorageConfig(backend="sqlite", path=tmp_path / "directory.db")
    config_path = tmp_path / "directory.toml"
    port = write_config(config_path, credentials, storage)
    process = ServiceProcess(config_path, port)
    yield process, credentials
    process.stop()
