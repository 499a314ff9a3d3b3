"""Which tenant a bearer token belongs to, as the directory says (`GET /v1/whoami`).

Answers, good and bad, are kept for a short time only, so a busy tenant does not cost a
directory round trip per request, and a token revoked at the directory stops working here
within `ttl` seconds (plus one directory answer). A directory that cannot answer is never
cached: the caller gets a 503 and the next request asks again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from federation.client import DirectoryClient
from federation.errors import DirectoryError, Forbidden, Unauthorized
from federation.models import Identity
from hostagent.errors import Unauthorized as AgentUnauthorized
from hostagent.errors import Unavailable

Whoami = Callable[[str], Awaitable[Identity]]
TTL = 2.0  # revocation must take effect within 5 s: 2 s of cache plus a directory answer
MAX_ENTRIES = 4096


def directory_whoami(url: str, timeout: float, ca_file: Path | None = None) -> Whoami:
    """Ask the directory at `url` (verified with `ca_file`) who a token is."""

    async def whoami(token: str) -> Identity:
        async with DirectoryClient(url, token, timeout=timeout, ca_file=ca_file) as client:
            return await client.whoami()

    return whoami


@dataclass(frozen=True)
class _Answer:
    tenant: str | None  # None: not a valid tenant token
    until: float


class TenantTokens:
    """`await tokens.tenant(token)` -> the tenant's name, or raises Unauthorized (401) or
    Unavailable (503). Keyed by the token's hash, so no secret sits in the table's keys."""

    def __init__(
        self, whoami: Whoami, *, ttl: float = TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.whoami = whoami
        self.ttl = ttl
        self.clock = clock
        self._answers: dict[str, _Answer] = {}

    async def tenant(self, token: str) -> str:
        key = hashlib.sha256(token.encode()).hexdigest()
        answer = self._answers.get(key)
        if answer is None or answer.until <= self.clock():
            answer = _Answer(await self._ask(token), self.clock() + self.ttl)
            self._remember(key, answer)
        if answer.tenant is None:
            raise AgentUnauthorized("invalid credentials: not an operator or tenant token")
        return answer.tenant

    async def _ask(self, token: str) -> str | None:
        try:
            identity = await self.whoami(token)
        except (Unauthorized, Forbidden):
            return None
        except DirectoryError as error:
            raise Unavailable(f"cannot check the token with the directory: {error}") from None
        return identity.tenant if identity.role == "tenant" and identity.tenant else None

    def _remember(self, key: str, answer: _Answer) -> None:
        """Keep the table small even when flooded with made-up tokens."""
        if len(self._answers) >= MAX_ENTRIES:
            now = self.clock()
            self._answers = {k: a for k, a in self._answers.items() if a.until > now}
            if len(self._answers) >= MAX_ENTRIES:
                self._answers.clear()
        self._answers[key] = answer
