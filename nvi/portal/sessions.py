"""Sign-in sessions, the only state the portal holds: kept in memory, named by a random id in
a cookie, each with its own CSRF token, ending after a fixed lifetime or an idle time.

A restart signs everybody out, which is the price of keeping no tokens on disk.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Session:
    id: str
    token: str = field(repr=False)
    role: str  # "tenant" or "admin"
    tenant: str | None
    csrf: str = field(repr=False)
    created: float
    seen: float
    notices: list[str] = field(default_factory=list)
    """Messages for the next page (after a form's redirect), shown once."""
    cloud: Any = field(default=None, repr=False)
    """The session's own client (nvi.client.cloud.Cloud with its token), opened lazily."""

    def csrf_ok(self, offered: str | None) -> bool:
        return offered is not None and secrets.compare_digest(offered, self.csrf)

    def take_notices(self) -> list[str]:
        notices, self.notices = self.notices, []
        return notices


class Sessions:
    """Sessions by id; `clock` is injectable so expiry is tested without waiting."""

    def __init__(
        self,
        lifetime: float,
        idle: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self.idle = idle
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self, token: str, role: str, tenant: str | None) -> Session:
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            role=role,
            tenant=tenant,
            csrf=secrets.token_urlsafe(32),
            created=now,
            seen=now,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (touched), or None; an expired one is dropped (the
        caller closes its client: `expired()` hands those over)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._over(session, now):
            return None
        session.seen = now
        return session

    def close(self, session_id: str) -> Session | None:
        return self._by_id.pop(session_id, None)

    def expired(self) -> list[Session]:
        """Remove and return every session past its lifetime or idle time."""
        now = self._clock()
        gone = [session for session in self._by_id.values() if self._over(session, now)]
        for session in gone:
            del self._by_id[session.id]
        return gone

    def all(self) -> list[Session]:
        return list(self._by_id.values())

    def _over(self, session: Session, now: float) -> bool:
        return now - session.created >= self.lifetime or now - session.seen >= self.idle
