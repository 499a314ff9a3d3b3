"""The lab's client configuration (`<lab rundir>/client.toml`): a profile per lab tenant
(`<lab>-<tenant>`, with that tenant's token file) and one for the lab's operator
(`<lab>-admin`), all pointing at the lab's directory and CA. Users of the CLI and the portal
on this machine reach the lab through its access link with
`export NVI_CONFIG=<path>; export NVI_PROFILE=<profile>` (format: docs/lab.md).
"""

from __future__ import annotations

import json
from pathlib import Path

CLIENT_CONFIG = "client.toml"


def render(
    lab: str,
    directory_url: str,
    ca_file: Path,
    admin_token_file: Path,
    tenant_token_files: dict[str, Path],
) -> str:
    """The file's text; the default profile is the first tenant's (a tenant creates nodes;
    the admin cannot), or the admin's when the lab has no tenant yet."""
    profiles = {f"{lab}-{tenant}": path for tenant, path in sorted(tenant_token_files.items())}
    profiles[f"{lab}-admin"] = admin_token_file
    default = next(iter(profiles))
    lines = [
        f"# NVI client profiles of lab {lab}, written by `nvi lab up` (see docs/lab.md)",
        f"default = {json.dumps(default)}",
    ]
    for name, token_file in profiles.items():
        lines += [
            "",
            f"[profiles.{json.dumps(name)}]",
            f"directory = [{json.dumps(directory_url)}]",
            f"ca_file = {json.dumps(str(ca_file))}",
            f"token_file = {json.dumps(str(token_file))}",
        ]
    return "\n".join(lines) + "\n"


def default_profile(text: str) -> str:
    """The default profile named in a rendered file."""
    for line in text.splitlines():
        if line.startswith("default = "):
            return str(json.loads(line.removeprefix("default = ")))
    raise ValueError("no default profile")
