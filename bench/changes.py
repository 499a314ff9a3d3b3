"""Change fan-out benchmark: what a node change costs the directory as followers are added.

One `nvi directory serve` process; N long-polling followers (N = 0, 10, 100, 1,000), each
with the credential of a server hosting a node of the tenant it follows: 10 follow tenant
`hot`, the rest tenants that never change. A stream of node creates in `hot` (one at a time,
through the API, as an agent publishes) measures the directory's CPU time per change (from
/proc/PID/stat over the run) and the create latency; every hot follower must see every
change, every other follower none; each row then deletes its nodes, so every row creates
in an equally small tenant. The servers and their nodes are loaded straight into the store
first. Run: `.venv/bin/python bench/changes.py [--changes C --followers 10 100 1000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from federation.client import DirectoryClient
from federation.config import StorageConfig
from federation.directory import Directory
from federation.models import NetworkCreate, NodeCreate
from federation.service import open_store
from nvi.core.output import print_table
from nvi.core.tls import client_context
from nvi.lab.directories import Credentials, ServiceProcess, start_etcd_cluster, write_config

HOT = 10  # followers of the changing tenant
COLD_TENANTS = 10  # the others follow one of these, which never change
WAIT = 20  # seconds each long poll waits


def pool(server: int) -> str:
    """Server k's locators: a /24 of 100.64.0.0/10."""
    return f"100.{64 + server // 256}.{server % 256}.0/24"


def locator(server: int) -> str:
    return f"100.{64 + server // 256}.{server % 256}.1"


def created(index: int) -> str:
    """The locator of the index-th node the benchmark creates (on the publishing server)."""
    return f"100.127.{index // 200}.{index % 200 + 1}"


async def load(storage: StorageConfig, followers: int) -> tuple[list[str], str, str]:
    """Enroll one server per follower, each hosting a node of the tenant it follows (servers
    0..9 the hot tenant), and the server that publishes the new nodes; returns the followers'
    credentials, the publisher's, and a token of the hot tenant."""
    store = open_store(storage)
    await store.open()
    directory = Directory(store)
    tenants = ["hot", *(f"cold{i}" for i in range(COLD_TENANTS))]
    for tenant in tenants:
        await directory.create_tenant(tenant)
        await directory.create_network(tenant, NetworkCreate(name="a", cidr="10.0.0.0/16"))
    tokens = []
    for k in range(max(followers, HOT)):
        server = await directory.enroll_server(f"s{k}", [pool(k)])
        tenant = "hot" if k < HOT else f"cold{k % COLD_TENANTS}"
        spec = NodeCreate(name=f"n{k}", kind="container", network="a", locator=locator(k))
        await directory.create_nodes(tenant, [spec], server)
        tokens.append(server.token)
    publisher = await directory.enroll_server("publisher", ["100.127.0.0/16"])
    hot_token = (await directory.create_token("hot")).token
    await store.close()
    return tokens, publisher.token, hot_token


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def follow(
    session: aiohttp.ClientSession, url: str, token: str, since: int, seen: list[int]
) -> None:
    """One follower's long-poll loop: append the revision of every change it is given."""
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        params = {"since": str(since), "wait": str(WAIT)}
        async with session.get(url + "/v1/changes", params=params, headers=headers) as reply:
            reply.raise_for_status()
            page = await reply.json()
        seen.extend(change["revision"] for change in page["changes"])
        since = page["revision"]


async def run(
    service: ServiceProcess,
    tokens: list[str],
    publisher: DirectoryClient,
    n: int,
    changes: int,
    first: int,
) -> dict:  # noqa: E501
    """Start `n` followers, create `changes` nodes in the hot tenant, and measure."""
    assert service.process
    url, ca_file, pid = service.url, service.ca_file, service.process.pid
    connector = aiohttp.TCPConnector(ssl=client_context(ca_file), limit=n + 10)
    timeout = aiohttp.ClientTimeout(total=WAIT + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        since = (await publisher.changes(None)).revision
        seen: list[list[int]] = [[] for _ in range(n)]
        tasks = [
            asyncio.create_task(follow(session, url, tokens[k], since, seen[k])) for k in range(n)
        ]
        await asyncio.sleep(2 + n / 200)  # every follower connected and waiting
        latencies = []
        cpu_before, began = cpu_seconds(pid), time.perf_counter()
        for i in range(changes):
            start = time.perf_counter()
            await publisher.create_node(
                "hot", f"c{first + i}", kind="container", network="a", locator=created(first + i)
            )
            latencies.append((time.perf_counter() - start) * 1000)
        hot = min(n, HOT)
        deadline = time.monotonic() + 30
        while any(len(seen[k]) < changes for k in range(hot)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        cpu = cpu_seconds(pid) - cpu_before
        elapsed = time.perf_counter() - began
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for i in range(changes):  # a create reads the tenant's nodes: every row starts as small
        await publisher.delete_node("hot", f"c{first + i}")
    complete = all(len(seen[k]) == changes for k in range(hot))
    quiet = not any(seen[k] for k in range(hot, n))
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "followers": n,
        "interested": hot,
        "cpu": cpu / changes * 1000,
        "p50 ms": f"{cuts[49]:.1f}",
        "p99 ms": f"{cuts[98]:.1f}",
        "changes/s": f"{changes / elapsed:.0f}",
        "delivered": "all" if complete else "MISSING",
        "uninterested saw": "nothing" if quiet else "CHANGES",
    }


async def bench_backend(
    backend: str, storage: StorageConfig, root: Path, args: argparse.Namespace
) -> list[dict]:  # noqa: E501
    tokens, publisher_token, hot = await load(storage, max(args.followers))
    credentials = Credentials()
    port = write_config(root / f"{backend}.toml", credentials, storage)
    service = ServiceProcess(root / f"{backend}.toml", port)
    service.start()
    rows = []
    try:
        async with DirectoryClient(
            service.url, publisher_token, tenant_token=hot, ca_file=service.ca_file
        ) as publisher:
            for i, n in enumerate([0, *args.followers]):
                row = await run(service, tokens, publisher, n, args.changes, i * args.changes)
                rows.append(row | {"backend": backend})
    finally:
        service.stop()
    base = next((row["cpu"] for row in rows if row["followers"] == HOT), None)
    for row in rows:
        row["x N=10"] = f"{row['cpu'] / base:.2f}" if base else ""
        row["cpu ms/change"] = f"{row.pop('cpu'):.2f}"
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100, help="node creates per row")
    parser.add_argument("--followers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "etcd"], default=["sqlite"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nvi-bench-") as tmp:
        root = Path(tmp)
        if "sqlite" in args.backends:
            sqlite = StorageConfig(backend="sqlite", path=root / "directory.db")
            rows += await bench_backend("sqlite", sqlite, root, args)
        if "etcd" in args.backends:
            cluster = start_etcd_cluster(root / "etcd")
            try:
                etcd = StorageConfig(backend="etcd", endpoints=cluster.endpoints)
                rows += await bench_backend("etcd (3 members)", etcd, root, args)
            finally:
                cluster.stop_all()
    columns = [
        "backend",
        "followers",
        "interested",
        "cpu ms/change",
        "x N=10",
        "p50 ms",
        "p99 ms",
        "changes/s",
        "delivered",
        "uninterested saw",
    ]
    print_table("directory CPU per node change, by long-polling followers", rows, columns)


if __name__ == "__main__":
    asyncio.run(main())
