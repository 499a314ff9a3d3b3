"""Storage backends: a small transactional key-value interface with a change log.

The directory's rules live once, in `federation.directory`, on top of this interface; a
backend only has to provide consistent reads, compare-and-commit transactions and an
ordered log of change records. That is what etcd offers natively, and what one sqlite
transaction gives for free, so both backends behave the same by construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_rev: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class Expect:
    """The commit succeeds only if `key` was last modified at `mod_rev` (0: does not exist)."""

    key: str
    mod_rev: int


@dataclass
class Snapshot:
    """Entries read at one revision, keyed by their key."""

    revision: int
    entries: dict[str, Entry] = field(default_factory=dict)

    def value(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        return entry.value if entry else None

    def mod_rev(self, key: str) -> int:
        entry = self.entries.get(key)
        return entry.mod_rev if entry else 0


@dataclass
class LogPage:
    """Change records after a revision, and the revision the read was taken at."""

    records: list[tuple[int, bytes]]
    head: int


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Store(ABC):
    """A transactional key-value store with a change log (see the module docstring)."""

    backend: str

    @abstractmethod
    async def open(self) -> None:
        """Connect or create; called once before any other method."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    @abstractmethod
    async def get(self, *keys: str) -> Snapshot:
        """Read several keys at one revision."""

    @abstractmethod
    async def scan(self, prefix: str) -> Snapshot:
        """Read every key that starts with `prefix`, at one revision."""

    @abstractmethod
    async def commit(
        self, expects: list[Expect], ops: list[Put | Delete], record: bytes | None
    ) -> int | None:
        """Apply `ops` and append `record` to the log atomically if every expectation holds.

        Returns the new revision, or None when an expectation failed (nothing was changed).
        """

    @abstractmethod
    async def log(self, since: int, limit: int) -> LogPage:
        """Records committed after revision `since`, oldest first; raises Gone if pruned."""

    @abstractmethod
    async def wait(self, since: int, timeout: float) -> None:
        """Return once a record after `since` may exist, or after `timeout` seconds."""

    @abstractmethod
    async def prune(self, keep: int) -> None:
        """Drop all but the newest `keep` log records; older cursors then get Gone."""
