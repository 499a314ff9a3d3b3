"""The replicated backend: an etcd v3 cluster, spoken to through its JSON gateway.

etcd's own transactions (compare mod_revision, then put/delete) give the atomicity; its
revision is the directory's revision; log records are keys whose create_revision orders
them, so reading "everything after revision R" is one range request. Several directory
replicas can share one cluster. Any member answers; a member that does not is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from federation.errors import Gone, Unavailable
from federation.storage import Delete, Entry, Expect, LogPage, Put, Snapshot, Store, prefix_end
from nvi.core.tls import client_context, tls_failure

_CA_HINT = "set storage.ca_file to its CA"
_MAX_TXN_OPS = 100
"""etcd refuses transactions with more than 128 operations unless started with --max-txn-ops."""


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class EtcdStore(Store):
    """`https://` endpoints are verified against `ca_file` (system trust when None); members
    started with `--client-cert-auth` also want `cert_file` and `key_file`."""

    backend = "etcd"

    def __init__(
        self,
        endpoints: list[str],
        prefix: str = "/nvi/directory/",
        timeout: float = 5,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ):
        if not endpoints:
            raise ValueError("the etcd backend needs at least one endpoint")
        self.endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self.prefix = prefix
        self.timeout = timeout
        self._current = 0
        self._ssl = client_context(ca_file, cert_file, key_file)

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=64, ssl=self._ssl),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the gateway, moving on to the next member when one does not answer."""
        message = "no etcd member answered"
        for attempt in range(2 * len(self.endpoints)):
            endpoint = self.endpoints[self._current]
            try:
                async with self._session.post(endpoint + path, json=body) as response:
                    data = await response.json(content_type=None)
                    if response.status == 200:
                        return data
                    message = f"etcd at {endpoint}: {data.get('message', response.status)}"
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as error:
                message = tls_failure("etcd", endpoint, error, _CA_HINT) or (
                    f"etcd at {endpoint}: {error or type(error).__name__}"
                )
            self._current = (self._current + 1) % len(self.endpoints)
            if attempt >= len(self.endpoints) - 1:
                await asyncio.sleep(0.2)  # e.g. a leader election after a member died
        raise Unavailable(message)

    def _range(self, key: str, *, end: str | None = None, **options: Any) -> dict[str, Any]:
        request = {"key": _b64(self.prefix + key), **options}
        if end is not None:
            request["range_end"] = _b64(self.prefix + end)
        return request

    def _entries(self, response: dict[str, Any]) -> dict[str, Entry]:
        entries = {}
        for kv in response.get("kvs", []):
            key = _unb64(kv["key"]).decode()[len(self.prefix) :]
            entries[key] = Entry(key, _unb64(kv.get("value", "")), int(kv["mod_revision"]))
        return entries

    async def get(self, *keys: str) -> Snapshot:
        reply = await self._call(
            "/v3/kv/txn", {"success": [{"request_range": self._range(key)} for key in keys]}
        )
        snapshot = Snapshot(int(reply["header"]["revision"]))
        for response in reply.get("responses", []):
            snapshot.entries.update(self._entries(response["response_range"]))
        return snapshot

    async def scan(self, prefix: str) -> Snapshot:
        reply = await self._call("/v3/kv/range", self._range(prefix, end=prefix_end(prefix)))
        return Snapshot(int(reply["header"]["revision"]), self._entries(reply))

    async def commit(
        self, expects: list[Expect], ops: list[Put | Delete], record: bytes | None
    ) -> int | None:
        compare = [
            {
                "key": _b64(self.prefix + expect.key),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": expect.mod_rev,
            }
            for expect in expects
        ]
        success = [
            {"request_put": {"key": _b64(self.prefix + op.key), "value": _b64(op.value)}}
            if isinstance(op, Put)
            else {"request_delete_range": {"key": _b64(self.prefix + op.key)}}
            for op in ops
        ]
        if record is not None:
            key = f"{self.prefix}log/{uuid.uuid4().hex}"
            success.append({"request_put": {"key": _b64(key), "value": _b64(record)}})
        reply = await self._call("/v3/kv/txn", {"compare": compare, "success": success})
        return int(reply["header"]["revision"]) if reply.get("succeeded") else None

    async def log(self, since: int, limit: int) -> LogPage:
        records = self._range(
            "log/",
            end=prefix_end("log/"),
            min_create_revision=since + 1,
            sort_order="ASCEND",
            sort_target="CREATE",
            limit=limit,
        )
        reply = await self._call(
            "/v3/kv/txn",
            {
                "success": [
                    {"request_range": records},
                    {"request_range": self._range("meta/pruned")},
                ]
            },
        )
        page, pruned = (response["response_range"] for response in reply["responses"])
        pruned_at = int(next(iter(self._entries(pruned).values()), Entry("", b"0", 0)).value)
        if since < pruned_at:
            raise Gone(f"changes after revision {since} were pruned; resynchronise")
        rows = [
            (int(kv["create_revision"]), _unb64(kv.get("value", ""))) for kv in page.get("kvs", [])
        ]
        return LogPage(rows, int(reply["header"]["revision"]))

    async def wait(self, since: int, timeout: float) -> None:
        """Watch the log from `since`; etcd streams one JSON object per line."""
        request = {
            "create_request": {
                **self._range("log/", end=prefix_end("log/")),
                "start_revision": since + 1,
                "filters": ["NODELETE"],
            }
        }
        endpoint = self.endpoints[self._current]
        try:
            async with asyncio.timeout(timeout):
                async with self._session.post(
                    endpoint + "/v3/watch", json=request, timeout=aiohttp.ClientTimeout()
                ) as response:
                    async for line in response.content:
                        result = json.loads(line).get("result", {})
                        if result.get("events") or result.get("compact_revision"):
                            return
        except TimeoutError:
            return
        except (aiohttp.ClientError, json.JSONDecodeError):
            self._current = (self._current + 1) % len(self.endpoints)
            await asyncio.sleep(min(timeout, 0.5))

    async def prune(self, keep: int) -> None:
        """Delete the oldest records in batches; replicas pruning at once cannot move the
        pruned mark backwards, because each batch expects the mark it read."""
        log_range = self._range("log/", end=prefix_end("log/"))
        count = int(
            (await self._call("/v3/kv/range", {**log_range, "count_only": True})).get("count", 0)
        )
        excess = count - keep
        while excess > 0:
            mark = await self.get("meta/pruned")
            oldest = await self._call(
                "/v3/kv/range",
                {
                    **log_range,
                    "keys_only": True,
                    "sort_order": "ASCEND",
                    "sort_target": "CREATE",
                    "limit": min(excess, _MAX_TXN_OPS),
                },
            )
            kvs = oldest.get("kvs", [])
            last = max((int(kv["create_revision"]) for kv in kvs), default=0)
            pruned = max(last, int(mark.value("meta/pruned") or b"0"))
            ops: list[Put | Delete] = [
                Delete(_unb64(kv["key"]).decode()[len(self.prefix) :]) for kv in kvs
            ]
            ops.append(Put("meta/pruned", str(pruned).encode()))
            expect = [Expect("meta/pruned", mark.mod_rev("meta/pruned"))]
            if not kvs or await self.commit(expect, ops, None) is None:
                return
            excess -= len(kvs)
