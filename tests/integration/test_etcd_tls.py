"""The etcd backend over client TLS: a real etcd member that serves HTTPS and wants a client
certificate, the directory storing through it, and the one-line error of a wrong CA."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from federation.client import DirectoryClient
from federation.config import StorageConfig
from federation.directory import Directory
from federation.errors import Unavailable
from federation.service import open_store
from nvi.core.tls import ensure_ca
from nvi.lab.directories import (
    Credentials,
    EtcdCluster,
    ServiceProcess,
    start_etcd_cluster,
    write_config,
)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = start_etcd_cluster(tmp_path_factory.mktemp("etcd-tls"), size=1, tls=True)
    yield cluster
    cluster.stop_all()


def _prefix() -> str:
    return f"/test/{uuid.uuid4().hex}/"


@pytest.fixture
async def tls_directory(tls_cluster: EtcdCluster) -> AsyncIterator[Directory]:
    store = open_store(tls_cluster.storage(_prefix()))
    await store.open()
    yield Directory(store)
    await store.close()


async def _create_tenant(storage: StorageConfig) -> None:
    store = open_store(storage)
    await store.open()
    try:
        await Directory(store).create_tenant("acme")
    finally:
        await store.close()


def test_members_serve_https(tls_cluster: EtcdCluster) -> None:
    assert all(url.startswith("https://127.0.0.1:") for url in tls_cluster.endpoints)


async def test_the_directory_stores_and_reads_over_tls(tls_directory: Directory) -> None:
    await tls_directory.create_tenant("acme")
    assert (await tls_directory.get_tenant("acme")).name == "acme"


async def test_a_wrong_ca_is_one_line_naming_the_member(
    tls_cluster: EtcdCluster, tmp_path: Path
) -> None:
    other_ca = ensure_ca(tmp_path / "other")[0].cert_file
    storage = tls_cluster.storage(_prefix()).model_copy(update={"ca_file": other_ca})
    with pytest.raises(Unavailable) as caught:
        await _create_tenant(storage)
    assert str(caught.value) == (
        f"etcd at {tls_cluster.endpoints[0]}: certificate does not verify "
        "(unable to get local issuer certificate): set storage.ca_file to its CA"
    )


async def test_a_client_without_a_certificate_is_refused(tls_cluster: EtcdCluster) -> None:
    storage = tls_cluster.storage(_prefix())
    storage = storage.model_copy(update={"cert_file": None, "key_file": None})
    with pytest.raises(Unavailable) as caught:
        await _create_tenant(storage)
    assert str(caught.value) == (
        f"etcd at {tls_cluster.endpoints[0]}: TLS failed (sslv3 alert bad certificate)"
    )


async def test_the_service_reads_tls_paths_relative_to_its_config(
    tls_cluster: EtcdCluster,
) -> None:
    """The config sits next to the cluster's `tls` folder and names the files relatively."""
    assert tls_cluster.tls is not None
    folder = tls_cluster.tls.ca_file.parent
    relative = StorageConfig(
        backend="etcd",
        endpoints=tls_cluster.endpoints,
        prefix=_prefix(),
        ca_file=Path(folder.name) / "ca.crt",
        cert_file=Path(folder.name) / "client.crt",
        key_file=Path(folder.name) / "client.key",
    )
    credentials = Credentials()
    config_path = folder.parent / f"directory-{uuid.uuid4().hex[:8]}.toml"
    process = ServiceProcess(config_path, write_config(config_path, credentials, relative))
    try:
        process.start()
        async with DirectoryClient(
            process.url, credentials.admin, ca_file=process.ca_file
        ) as admin:
            await admin.create_tenant("acme")
            assert [tenant.name for tenant in await admin.list_tenants()] == ["acme"]
    finally:
        process.stop()
