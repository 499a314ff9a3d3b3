"""The agent's tenant-token cache: how long an answer is trusted, and what a directory that
cannot answer becomes. A fake directory and a hand-moved clock: no network, no waiting."""

from __future__ import annotations

import pytest

from federation.errors import Forbidden, Unauthorized, Unavailable
from federation.models import Identity
from hostagent import tenants
from hostagent.errors import AgentError
from hostagent.tenants import TenantTokens


class FakeDirectory:
    """Tokens it knows, whether it answers, and how often it was asked."""

    def __init__(self) -> None:
        self.tokens: dict[str, Identity] = {
            "acme-token": Identity(role="tenant", tenant="acme"),
            "admin-token": Identity(role="admin"),
        }
        self.down = False
        self.asked = 0

    async def whoami(self, token: str) -> Identity:
        self.asked += 1
        if self.down:
            raise Unavailable("directory at http://192.0.2.1:7480: Connection refused")
        if token == "forbidden-token":
            raise Forbidden("no")
        if token not in self.tokens:
            raise Unauthorized("invalid credentials")
        return self.tokens[token]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(directory: FakeDirectory, clock: Clock) -> TenantTokens:
    return TenantTokens(directory.whoami, ttl=2.0, clock=clock)


async def refused(tokens: TenantTokens, token: str) -> int:
    with pytest.raises(AgentError) as error:
        await tokens.tenant(token)
    return error.value.status


async def test_a_tenant_token_is_its_tenant_and_asked_once_within_the_ttl(
    tokens: TenantTokens, directory: FakeDirectory, clock: Clock
) -> None:
    assert await tokens.tenant("acme-token") == "acme"
    clock.now += 1.9
    assert await tokens.tenant("acme-token") == "acme"
    assert directory.asked == 1
    clock.now += 0.2
    assert await tokens.tenant("acme-token") == "acme"
    assert directory.asked == 2


async def test_a_revoked_token_is_refused_once_the_ttl_has_passed(
    tokens: TenantTokens, directory: FakeDirectory, clock: Clock
) -> None:
    assert await tokens.tenant("acme-token") == "acme"
    del directory.tokens["acme-token"]
    clock.now += 1.0
    assert await tokens.tenant("acme-token") == "acme"  # still within the 2 s it may be trusted
    clock.now += 1.0
    assert await refused(tokens, "acme-token") == 401


async def test_refusals_are_cached_too_and_a_new_token_works_after_the_ttl(
    tokens: TenantTokens, directory: FakeDirectory, clock: Clock
) -> None:
    assert await refused(tokens, "new-token") == 401
    assert await refused(tokens, "new-token") == 401
    assert directory.asked == 1
    directory.tokens["new-token"] = Identity(role="tenant", tenant="acme")
    clock.now += 2.0
    assert await tokens.tenant("new-token") == "acme"


@pytest.mark.parametrize("token", ["admin-token", "forbidden-token", "unknown"])
async def test_only_tenant_tokens_are_tenants(tokens: TenantTokens, token: str) -> None:
    assert await refused(tokens, token) == 401


async def test_a_directory_that_cannot_answer_is_a_503_and_never_cached(
    tokens: TenantTokens, directory: FakeDirectory
) -> None:
    directory.down = True
    with pytest.raises(AgentError) as error:
        await tokens.tenant("acme-token")
    assert error.value.status == 503 and "Connection refused" in str(error.value)
    directory.down = False
    assert await tokens.tenant("acme-token") == "acme"  # no wait for a ttl


async def test_a_flood_of_made_up_tokens_does_not_grow_the_table(
    tokens: TenantTokens, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenants, "MAX_ENTRIES", 10)
    for number in range(25):
        await refused(tokens, f"made-up-{number}")
        clock.now += 0.01
    assert len(tokens._answers) <= 10
