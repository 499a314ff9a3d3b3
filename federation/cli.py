"""`nvi directory serve|init|credential|audit`: run the directory and operate it on its own
machine. The commands that talk to a directory (tenants, networks, links, servers) are the
user's client's, in nvi/client/directory_cli.py: a server's processes never carry them."""

from __future__ import annotations

from pathlib import Path

import click

from federation.config import (
    AuthConfig,
    Config,
    StorageConfig,
    TlsConfig,
    load_config,
    render_config,
)
from nvi.core.clitools import (
    output_option,
    show_rows,
)
from nvi.core.config import write_secret
from nvi.core.errors import NviError
from nvi.core.tls import ensure_ca, ensure_certificate
from nvi.core.tokens import new_token, token_hash


@click.group()
def directory() -> None:
    """The federation directory's service, on its own machine."""


@directory.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="TOML file (see docs/directory.md; `nvi directory init` writes one)",
)
def serve(config_path: str) -> None:
    """Run the directory service until SIGINT or SIGTERM."""
    from federation.service import serve as run

    run(load_config(config_path))


@directory.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7480, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--cert-name",
    "cert_names",
    multiple=True,
    metavar="NAME",
    help="an address or DNS name clients use, for the certificate (repeat; default: --host)",
)
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="sign with the CA in this folder (ca.crt, ca.key; made if missing); default: FOLDER",
)
@click.option(
    "--etcd",
    "etcd_endpoints",
    multiple=True,
    metavar="URL",
    help="use the etcd backend with this member (repeat for each member)",
)
@output_option
def init(
    folder: str,
    host: str,
    port: int,
    cert_names: tuple[str, ...],
    ca_dir: Path | None,
    etcd_endpoints: tuple[str, ...],
    output: str,
) -> None:
    """Write FOLDER/directory.toml, a fresh admin token (mode 0600), and the service's HTTPS
    certificate, signed by a CA of its own unless --ca-dir names one: clients are given its
    ca.crt (--ca-file)."""
    root = Path(folder)
    config = root / "directory.toml"
    if config.exists():
        raise NviError(f"{config} exists; not overwriting it")
    root.mkdir(parents=True, exist_ok=True)
    admin = new_token()
    write_secret(root / "admin.token", admin)
    storage = (
        StorageConfig(backend="etcd", endpoints=list(etcd_endpoints))
        if etcd_endpoints
        else StorageConfig(backend="sqlite", path=Path("directory.db"))
    )
    auth = AuthConfig(admin_token_sha256=[token_hash(admin)])
    ca, _ = ensure_ca(ca_dir or root)
    certificate, _ = ensure_certificate(ca, root, "directory", cert_names or [host])
    tls = TlsConfig(
        cert_file=Path(certificate.cert_file.name), key_file=Path(certificate.key_file.name)
    )
    config.write_text(
        render_config(Config(host=host, port=port, storage=storage, tls=tls, auth=auth))
    )
    row = {
        "config": str(config),
        "admin token": str(root / "admin.token"),
        "ca file": str(ca.cert_file),
        "url": f"https://{cert_names[0] if cert_names else host}:{port}",
    }
    show_rows(output, "directory", [row], list(row))


@directory.command("credential")
@output_option
def credential(output: str) -> None:
    """Make a new admin token and the hash to put in the config file."""
    secret = new_token()
    row = {"token": secret, "sha256": token_hash(secret)}
    show_rows(output, "credential", [row], list(row))


@directory.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="the directory's TOML file (names its audit log)",
)
@click.option("--tenant", "tenant_name", help="only changes by or for this tenant")
@click.option("--server", "server_name", help="only changes by this server")
@click.option("--refused", is_flag=True, help="only refused changes")
@click.option("--last", type=click.IntRange(1), help="only the last N entries")
@output_option
def audit(
    config_path: str,
    tenant_name: str | None,
    server_name: str | None,
    refused: bool,
    last: int | None,
    output: str,
) -> None:
    """Read the audit log: every change, who made it, and how it ended."""
    from federation.audit import read_audit

    entries = read_audit(load_config(config_path).audit_log, tenant_name, server_name, refused)
    if last:
        entries = entries[-last:]
    if output != "table":
        show_rows(output, "audit", entries, [])
    else:
        rows = [
            {
                "time": entry["time"],
                "actor": " ".join(f"{k}={v}" for k, v in entry["actor"].items()),
                "change": f"{entry['method']} {entry['path']}",
                "status": entry["status"],
                "error": entry.get("error", ""),
            }
            for entry in entries
        ]
        show_rows(output, "audit", rows, ["time", "actor", "change", "status", "error"])
