"""Directory lookup benchmark: 100,000 nodes across 1,000 tenants, on both backends.

For each backend it enrolls the servers (50, each with its own locator pool) and loads the
records (in batches, straight into the store, each node published by its server), starts
`nvi directory serve` as its own process, and times lookups through the HTTP API with the
client library, as a controller makes them: with the credential of the server hosting the
looked-up-for node, one at a time (latency) and 16 at once (throughput).
Run: `.venv/bin/python bench/directory.py [--tenants N --nodes-per-tenant M]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from federation.client import DirectoryClient
from federation.config import StorageConfig
from federation.directory import Directory
from federation.models import LinkCreate, NetworkCreate, NodeCreate, ServerEnrolled
from federation.service import open_store
from nvi.core.model import Node
from nvi.core.output import print_table
from nvi.lab.directories import Credentials, ServiceProcess, start_etcd_cluster, write_config

BATCH = 20  # nodes per transaction: 5 keys each stays under etcd's 128 operations
SERVERS = 50  # tenant t's nodes run on server s<t % SERVERS>


def pool(server: int) -> str:
    """Server k's locators: 100.(64+k).0.0/16, inside 100.64.0.0/10 for up to 64 servers."""
    return f"100.{64 + server}.0.0/16"


def locator(server: int, index: int) -> str:
    """The index-th locator of server k's pool (the pool holds 65,536)."""
    return f"100.{64 + server}.{index // 256}.{index % 256}"


async def load(
    storage: StorageConfig, tenants: int, per_tenant: int
) -> tuple[list[Node], dict[str, str]]:
    """Enroll the servers and write the records; returns every node (the lookup workload draws
    from them) and each server's credential."""
    store = open_store(storage)
    await store.open()
    directory = Directory(store)
    servers: list[ServerEnrolled] = [
        await directory.enroll_server(f"s{k}", [pool(k)]) for k in range(min(SERVERS, tenants))
    ]
    if (tenants + len(servers) - 1) // len(servers) * per_tenant > 65536:
        raise SystemExit(f"more than 65,536 nodes per server: at most {SERVERS} servers")
    nodes: list[Node] = []
    half = per_tenant // 2

    async def tenant(t: int) -> None:
        name = f"t{t}"
        await directory.create_tenant(name)
        await directory.create_network(name, NetworkCreate(name="a", cidr="10.0.0.0/22"))
        await directory.create_network(name, NetworkCreate(name="b", cidr="10.0.4.0/22"))
        await directory.create_link(name, LinkCreate(kind="network", ends={"a", "b"}))
        server = t % len(servers)
        first = t // len(servers) * per_tenant  # the tenant's share of its server's pool
        specs = [
            NodeCreate(
                name=f"n{i}",
                kind="container",
                network="a" if i < half else "b",
                locator=locator(server, first + i),
            )
            for i in range(per_tenant)
        ]
        for start in range(0, len(specs), BATCH):
            batch = specs[start : start + BATCH]
            nodes.extend(await directory.create_nodes(name, batch, servers[server]))

    queue = list(range(tenants))

    async def worker() -> None:
        while queue:
            await tenant(queue.pop())

    await asyncio.gather(*(worker() for _ in range(8)))
    await store.close()
    return nodes, {server.name: server.token for server in servers}


async def timed(
    count: int, concurrency: int, lookup: Callable[[int], Awaitable[object]]
) -> tuple[float, list[float]]:
    """Run `count` lookups `concurrency` at a time; returns (lookups/s, latencies in ms)."""
    latencies: list[float] = []
    next_index = iter(range(count))

    async def worker() -> None:
        for index in next_index:
            began = time.perf_counter()
            await lookup(index)
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - began), latencies


async def measure(
    url: str, credentials: dict[str, str], nodes: list[Node], count: int, ca_file: Path
) -> list[dict]:
    """Each lookup is made by the server hosting the node it is made for (a resolve's source,
    a locate's locator holder), as its controller would: the directory answers a server only
    about the nodes it hosts."""
    by_tenant: dict[str, list[Node]] = {}
    for node in nodes:
        by_tenant.setdefault(node.tenant, []).append(node)
    rng = random.Random(1)
    pairs = []
    for _ in range(count):
        source = rng.choice(nodes)
        pairs.append((source, rng.choice(by_tenant[source.tenant])))
    rows = []
    clients = {
        name: DirectoryClient(url, token, ca_file=ca_file) for name, token in credentials.items()
    }
    try:

        def resolve(i: int) -> Awaitable[object]:
            source, destination = pairs[i]
            return clients[source.server].resolve(destination.ip, source=source.id)

        def locate(i: int) -> Awaitable[object]:
            return clients[pairs[i][1].server].locate(pairs[i][1].locator)

        await timed(min(500, count), 4, resolve)
        kinds = {"resolve": resolve, "locate": locate}
        for kind, lookup in kinds.items():
            for concurrency in (1, 16):
                rate, latencies = await timed(count, concurrency, lookup)
                cuts = statistics.quantiles(latencies, n=100)
                rows.append(
                    {
                        "lookup": kind,
                        "concurrency": concurrency,
                        "lookups/s": f"{rate:,.0f}",
                        "p50 ms": f"{cuts[49]:.2f}",
                        "p99 ms": f"{cuts[98]:.2f}",
                    }
                )
    finally:
        for client in clients.values():
            await client.close()
    return rows


async def bench_backend(
    backend: str, storage: StorageConfig, root: Path, args: argparse.Namespace
) -> list[dict]:
    began = time.perf_counter()
    nodes, servers = await load(storage, args.tenants, args.nodes_per_tenant)
    loaded = time.perf_counter() - began
    os.sync()  # let the load's disk writes finish before timing lookups
    gc.collect()
    gc.freeze()  # the 100,000 loaded nodes are this process's, not a controller's, burden
    credentials = Credentials()
    port = write_config(root / f"{backend}.toml", credentials, storage)
    service = ServiceProcess(root / f"{backend}.toml", port)
    service.start()
    try:
        rows = await measure(service.url, servers, nodes, args.lookups, service.ca_file)
    finally:
        service.stop()
    for row in rows:
        row |= {"backend": backend, "nodes": f"{len(nodes):,}", "load s": f"{loaded:.0f}"}
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--nodes-per-tenant", type=int, default=100)
    parser.add_argument("--lookups", type=int, default=10_000, help="per row")
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "etcd"], default=["sqlite", "etcd"]
    )
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
        "nodes",
        "load s",
        "lookup",
        "concurrency",
        "lookups/s",
        "p50 ms",
        "p99 ms",
    ]
    print_table("directory lookups over HTTP (one client process, loopback)", rows, columns)


if __name__ == "__main__":
    asyncio.run(main())
