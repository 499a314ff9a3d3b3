"""The user's client config: named profiles, each a directory, its CA and a credential.

The file is `$NVI_CONFIG`, else `$XDG_CONFIG_HOME/nvi/config.toml`, else
`~/.config/nvi/config.toml` (docs/tenant.md):

    default = "red"
    [profiles.red]
    directory = ["https://198.51.100.5:7480"]   # fail-over order; a string is accepted too
    ca_file = "ca.crt"                           # relative to the config file's folder
    token_file = "red.token"                     # or token = "nvi_..."

Values given on the command line or in the environment (`--directory`/`NVI_DIRECTORY`,
`--ca-file`/`NVI_CA_FILE`, `--token`/`NVI_TOKEN`, `--token-file`/`NVI_TOKEN_FILE`) override the
profile's, so a one-off command needs no file at all.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvi.core.errors import NviError

KEYS = {"directory", "ca_file", "token", "token_file"}


class ProfileError(NviError):
    """The config file or a profile in it cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Profile:
    """Where the directory is and who we are to it; empty fields mean "not configured"."""

    name: str | None
    directory: tuple[str, ...] = ()
    ca_file: Path | None = None
    token: str | None = None

    def require(self) -> Profile:
        """This profile, if it names a directory and a credential; else a one-line why."""
        which = f"profile {self.name}: " if self.name else ""
        if not self.directory:
            raise ProfileError(
                f"{which}which directory? set one in a profile (--profile, NVI_PROFILE) "
                "or pass --directory (NVI_DIRECTORY)"
            )
        if not self.token:
            raise ProfileError(
                f"{which}no credential: set token or token_file in the profile, "
                "or pass --token-file (NVI_TOKEN_FILE) or --token (NVI_TOKEN)"
            )
        return self


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the config file is looked for."""
    env = os.environ if env is None else env
    if env.get("NVI_CONFIG"):
        return Path(env["NVI_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "nvi" / "config.toml"


def read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ProfileError(f"cannot read config {path}: {error.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"config {path} is not valid TOML: {error}") from None


def read_secret(path: Path | str, what: str = "token file") -> str:
    """A credential file's content; a one-line error if it cannot be read or is empty."""
    try:
        secret = Path(path).expanduser().read_text().strip()
    except OSError as error:
        raise ProfileError(f"cannot read {what} {path}: {error.strerror}") from None
    if not secret:
        raise ProfileError(f"{what} {path} is empty")
    return secret


def resolve(
    profile: str | None = None,
    *,
    directory: str | list[str] | tuple[str, ...] | None = None,
    ca_file: Path | str | None = None,
    token: str | None = None,
    token_file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> Profile:
    """The profile to use: `profile` (else NVI_PROFILE, else the file's `default`) with the
    given values, else the environment's, laid over it. Without a config file and without a
    profile named, the result holds only the overrides (perhaps nothing: see `require`)."""
    env = os.environ if env is None else env
    name = profile or env.get("NVI_PROFILE") or None
    path = config_path(env)
    settings: dict[str, Any] = {}
    if name is not None and not path.exists():
        raise ProfileError(f"no profile {name}: there is no config file {path}")
    if name is not None or path.exists() or env.get("NVI_CONFIG"):
        settings, name = _pick(read_config(path), name, path)

    folder = path.parent
    urls = _urls(settings.get("directory", []), path)
    ca = Path(settings["ca_file"]).expanduser() if settings.get("ca_file") else None
    ca = folder / ca if ca is not None and not ca.is_absolute() else ca
    secret = settings.get("token") or None
    secret_file = settings.get("token_file")

    directory = directory or env.get("NVI_DIRECTORY") or None
    if directory:
        urls = _urls(directory.split(",") if isinstance(directory, str) else directory, path)
    if ca_file or env.get("NVI_CA_FILE"):
        ca = Path(ca_file or env["NVI_CA_FILE"]).expanduser()
    token = token or env.get("NVI_TOKEN") or None
    token_file = token_file or env.get("NVI_TOKEN_FILE") or None
    if token or token_file:  # an override replaces the profile's credential, whichever form
        secret, secret_file = token, token_file
        folder = Path.cwd()
    if not secret and secret_file:
        secret_path = Path(secret_file).expanduser()
        secret = read_secret(secret_path if secret_path.is_absolute() else folder / secret_path)
    return Profile(name=name, directory=urls, ca_file=ca, token=secret)


def _pick(config: dict[str, Any], name: str | None, path: Path) -> tuple[dict[str, Any], str]:
    """The named (or default) profile's table, checked for unknown keys."""
    profiles = config.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ProfileError(f"config {path}: `profiles` must be a table ([profiles.NAME])")
    if name is None:
        name = config.get("default")
        if not isinstance(name, str):
            have = ", ".join(sorted(profiles)) or "none"
            raise ProfileError(
                f"config {path} has no `default`: pick a profile with --profile or "
                f"NVI_PROFILE (profiles: {have})"
            )
    settings = profiles.get(name)
    if not isinstance(settings, dict):
        have = ", ".join(sorted(profiles)) or "none"
        raise ProfileError(f"no profile {name} in {path} (profiles: {have})")
    unknown = sorted(set(settings) - KEYS)
    if unknown:
        raise ProfileError(
            f"profile {name} in {path}: unknown key {unknown[0]} (known: {', '.join(sorted(KEYS))})"
        )
    return settings, name


def _urls(value: Any, path: Path) -> tuple[str, ...]:
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list | tuple) or not all(isinstance(url, str) for url in urls):
        raise ProfileError(f"config {path}: directory must be a URL or a list of URLs")
    urls = [url.strip() for url in urls if url.strip()]
    for url in urls:
        if not url.startswith("https://"):
            raise ProfileError(f"directory {url}: the directory speaks only https://")
    return tuple(urls)
