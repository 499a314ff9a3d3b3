"""Reading the directory's audit log (the service appends one JSON line per change)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nvi.core.errors import NviError


def read_audit(
    path: Path, tenant: str | None = None, server: str | None = None, refused: bool = False
) -> list[dict[str, Any]]:
    """Entries in order, filtered; a torn last line (a crash mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise NviError(f"cannot read audit log {path}: {error.strerror}") from None
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        actor = entry.get("actor", {})
        if tenant and tenant not in (actor.get("tenant"), _path_tenant(entry.get("path", ""))):
            continue
        if server and actor.get("server") != server:
            continue
        if refused and entry.get("status", 0) < 400:
            continue
        entries.append(entry)
    return entries


def _path_tenant(path: str) -> str | None:
    """The tenant a change was made to (an admin's change names it only in the path)."""
    parts = path.strip("/").split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "tenants" else None
