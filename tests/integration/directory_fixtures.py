"""Fixtures for the directory tests: a real 3-member etcd cluster on loopback, stores of both
backends, the service in-process on a loopback port, and the service as its own process.

Test modules use them with `pytest_plugins = ["integration.directory_fixtures"]`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from federation.client import DirectoryClient
from federation.config import Config, StorageConfig
from federation.directory import Directory
from federation.local import (
    Credentials,
    EtcdCluster,
    ServiceProcess,
    free_port,
    start_etcd_cluster,
    write_config,
)
from federation.service import make_app, open_store
from federation.storage import Store


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
async def directory(store: Store) -> Directory:
    return Directory(store)


@dataclass
class Service:
    url: str
    credentials: Credentials
    audit_log: Path
    servers: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None, tenant_token: str | None = None) -> DirectoryClient:
        return DirectoryClient(self.url, token, tenant_token=tenant_token)

    async def enroll(self, name: str, *pools: str) -> str:
        """Enroll a server as the directory's operator does; returns its credential."""
        async with self.client(self.credentials.admin) as admin:
            self.servers[name] = (await admin.enroll_server(name, list(pools))).token
        return self.servers[name]


@pytest.fixture
async def service(storage_config: StorageConfig, tmp_path: Path) -> AsyncIterator[Service]:
    """The real aiohttp application, in this process, on a loopback port."""
    credentials = Credentials()
    audit_log = tmp_path / "audit.log"
    config = Config(
        auth=credentials.auth(), storage=storage_config, max_wait=5, audit_log=audit_log
    )
    server = TestServer(make_app(config), host="127.0.0.1", port=free_port())
    await server.start_server()
    yield Service(str(server.make_url("")).rstrip("/"), credentials, audit_log)
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
