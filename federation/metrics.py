"""The directory's Prometheus metrics, one registry per service instance.

Label values are fixed words (lookup kind and outcome, backend name): never a tenant, node,
address or locator, so a scrape reveals load and health, not records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import CounterMetricFamily, Metric

from federation.errors import DirectoryError, NotFound
from federation.feed import Feed
from nvi.core.metrics import HttpMetrics

T = TypeVar("T")


class DirectoryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.lookups = Counter(
            "nvi_directory_lookups",
            "Lookups answered: resolve (allowed, denied, not_found, error) and locate "
            "(found, not_found, error)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.change_waits = Counter(
            "nvi_directory_change_waits",
            "Change-stream requests that asked to wait for changes (long polls)",
            registry=self.registry,
        )
        self.change_waiters = Gauge(
            "nvi_directory_change_waiters",
            "Long polls waiting for changes now (about one per following controller)",
            registry=self.registry,
        )
        self.catalogue_reads = Counter(
            "nvi_directory_catalogue_reads",
            "Catalogue reads by the caller's role (admin, tenant; a server's is refused)",
            ["role"],
            registry=self.registry,
        )
        for role in ("admin", "tenant", "server"):
            self.catalogue_reads.labels(role)  # shown at 0: "servers read nothing" is a fact
        self.catalogue_refused = Counter(
            "nvi_directory_catalogue_refused",
            "Catalogue reads refused because a server asked (servers never read it)",
            registry=self.registry,
        )
        self.announcements = Counter(
            "nvi_directory_catalogue_announcements",
            "Catalogue announcements: new (or changed) entries, and renewals",
            ["kind"],
            registry=self.registry,
        )
        self.store = Info("nvi_directory_store", "The storage backend", registry=self.registry)
        self._feed: Feed | None = None
        self.registry.register(self)

    def follow(self, feed: Feed) -> None:
        """Export the change feed's counts (kept by the feed, read at each scrape)."""
        self._feed = feed

    def collect(self) -> Iterator[Metric]:
        feed = self._feed
        yield CounterMetricFamily(
            "nvi_directory_change_wakeups",
            "Long polls woken by a change of a tenant they follow (a follower of other "
            "tenants is never woken)",
            value=feed.woken if feed else 0,
        )
        yield CounterMetricFamily(
            "nvi_directory_changes_delivered",
            "Changes handed to followers (one per change per follower that gets it)",
            value=feed.delivered if feed else 0,
        )

    async def lookup(
        self, kind: str, work: Callable[[], Awaitable[T]], outcome: Callable[[T], str]
    ) -> T:
        """Run one lookup and count how it ended."""
        try:
            answer = await work()
        except NotFound:
            self.lookups.labels(kind, "not_found").inc()
            raise
        except DirectoryError:
            self.lookups.labels(kind, "error").inc()
            raise
        self.lookups.labels(kind, outcome(answer)).inc()
        return answer
