"""Bearer tokens: made here, stored and compared only as hashes."""

from __future__ import annotations

import hashlib
import secrets


def token_hash(secret: str) -> str:
    """Tokens are 256 random bits, so one SHA-256 is enough to make a stolen database useless."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    return "nvi_" + secrets.token_urlsafe(32)
