"""`nvi directory ...`: run the directory service and operate it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from federation.client import DirectoryClient
from federation.config import (
    AuthConfig,
    Config,
    StorageConfig,
    TlsConfig,
    load_config,
    render_config,
)
from nvi.core.clitools import (
    ca_file,
    ca_file_option,
    option_group,
    output_option,
    read_token,
    run_client,
    show_rows,
)
from nvi.core.config import write_secret
from nvi.core.errors import NviError
from nvi.core.model import LinkKind
from nvi.core.tls import ensure_ca, ensure_certificate
from nvi.core.tokens import new_token, token_hash

NETWORK_COLUMNS = ["tenant", "name", "cidr", "gateway"]
LINK_COLUMNS = ["tenant", "id", "kind", "a", "b"]


@click.group()
def directory() -> None:
    """The federation directory: tenants, nodes, links and lookups."""


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
def openapi() -> None:
    """Print the API's OpenAPI document (as docs/api/directory.json; scripts/openapi)."""
    import json

    from federation.service import openapi_document

    click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))


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


_client_options = option_group(
    click.option(
        "--url",
        envvar="NVI_DIRECTORY_URL",
        default="https://127.0.0.1:7480",
        show_default=True,
        help="[env NVI_DIRECTORY_URL]",
    ),
    ca_file_option,
    click.option("--token", envvar="NVI_DIRECTORY_TOKEN", help="[env NVI_DIRECTORY_TOKEN]"),
    click.option(
        "--token-file",
        envvar="NVI_DIRECTORY_TOKEN_FILE",
        type=click.Path(dir_okay=False),
        help="[env NVI_DIRECTORY_TOKEN_FILE]",
    ),
    output_option,
)


def _run(
    url: str,
    token: str | None,
    token_file: str | None,
    call: Callable[[DirectoryClient], Awaitable[Any]],
) -> Any:
    """Run one client call; a token file wins over nothing, a --token over a file."""
    secret, ca = read_token(token, token_file), ca_file()
    return run_client(lambda: DirectoryClient(url, secret, ca_file=ca), call)


@directory.command()
@_client_options
def health(url: str, token: str | None, token_file: str | None, output: str) -> None:
    """Check that the service and its storage answer."""
    show_rows(
        output,
        "health",
        [_run(url, token, token_file, DirectoryClient.health)],
        ["status", "backend", "revision"],
    )


@directory.group()
def tenant() -> None:
    """Tenants (admin token)."""


@tenant.command("create")
@click.argument("name")
@_client_options
def tenant_create(
    name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """Create tenant NAME and its first token (shown once)."""

    async def call(client: DirectoryClient) -> Any:
        await client.create_tenant(name)
        return await client.create_token(name, "first token")

    show_rows(output, "tenant", [_run(url, token, token_file, call)], ["tenant", "id", "token"])


@tenant.command("list")
@_client_options
def tenant_list(url: str, token: str | None, token_file: str | None, output: str) -> None:
    """List tenants."""
    show_rows(
        output, "tenants", _run(url, token, token_file, DirectoryClient.list_tenants), ["name"]
    )


@tenant.command("delete")
@click.argument("name")
@_client_options
def tenant_delete(
    name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """Delete tenant NAME (it must have no networks)."""
    _run(url, token, token_file, lambda client: client.delete_tenant(name))


@directory.group()
def token() -> None:
    """Tenant tokens."""


@token.command("create")
@click.argument("tenant_name", metavar="TENANT")
@click.option("--description", default="", help="what the token is for")
@_client_options
def token_create(
    tenant_name: str,
    description: str,
    url: str,
    token: str | None,
    token_file: str | None,
    output: str,
) -> None:
    """Issue a new token for TENANT (the secret is shown once)."""
    created = _run(
        url, token, token_file, lambda client: client.create_token(tenant_name, description)
    )
    show_rows(output, "token", [created], ["tenant", "id", "description", "token"])


@directory.group()
def network() -> None:
    """A tenant's networks (tenant token; admin may act for any tenant)."""


@network.command("create")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@click.argument("cidr")
@click.option("--gateway", help="Default: the first host address")
@_client_options
def network_create(
    tenant_name: str,
    name: str,
    cidr: str,
    gateway: str | None,
    url: str,
    token: str | None,
    token_file: str | None,
    output: str,
) -> None:
    """Create network NAME with CIDR (another tenant may use the same CIDR)."""
    created = _run(
        url, token, token_file, lambda c: c.create_network(tenant_name, name, cidr, gateway)
    )
    show_rows(output, "network", [created], NETWORK_COLUMNS)


@network.command("list")
@click.argument("tenant_name", metavar="TENANT")
@_client_options
def network_list(
    tenant_name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """List TENANT's networks."""
    found = _run(url, token, token_file, lambda c: c.list_networks(tenant_name))
    show_rows(output, "networks", found, NETWORK_COLUMNS)


@network.command("delete")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@_client_options
def network_delete(
    tenant_name: str, name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """Delete network NAME (it must have no nodes)."""
    _run(url, token, token_file, lambda c: c.delete_network(tenant_name, name))
    show_rows(
        output,
        "network",
        [{"tenant": tenant_name, "name": name, "result": "deleted"}],
        ["tenant", "name", "result"],
    )


@directory.group()
def link() -> None:
    """A tenant's links: traffic allowed between two of its networks or two of its nodes."""


@link.command("create")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("kind", type=click.Choice([str(kind) for kind in LinkKind]))
@click.argument("a")
@click.argument("b")
@_client_options
def link_create(
    tenant_name: str,
    kind: str,
    a: str,
    b: str,
    url: str,
    token: str | None,
    token_file: str | None,
    output: str,
) -> None:
    """Allow traffic between networks (KIND network) or nodes (KIND node) A and B."""
    created = _run(url, token, token_file, lambda c: c.create_link(tenant_name, kind, a, b))
    show_rows(output, "link", [created], LINK_COLUMNS)


@link.command("list")
@click.argument("tenant_name", metavar="TENANT")
@_client_options
def link_list(
    tenant_name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """List TENANT's links."""
    found = _run(url, token, token_file, lambda c: c.list_links(tenant_name))
    show_rows(output, "links", found, LINK_COLUMNS)


@link.command("delete")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("link_id", metavar="ID")
@_client_options
def link_delete(
    tenant_name: str,
    link_id: str,
    url: str,
    token: str | None,
    token_file: str | None,
    output: str,
) -> None:
    """Remove link ID (`kind:a:b`, as listed); conversations it allowed stop within a second."""
    _run(url, token, token_file, lambda c: c.delete_link(tenant_name, link_id))
    show_rows(
        output,
        "link",
        [{"tenant": tenant_name, "id": link_id, "result": "deleted"}],
        ["tenant", "id", "result"],
    )


@directory.command("nodes")
@click.argument("tenant_name", metavar="TENANT")
@_client_options
def nodes(
    tenant_name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """List the nodes of TENANT."""
    show_rows(
        output,
        "nodes",
        _run(url, token, token_file, lambda client: client.list_nodes(tenant_name)),
        ["name", "kind", "network", "ip", "mac", "locator", "server", "id"],
    )


@directory.command()
@click.argument("locator")
@_client_options
def locate(locator: str, url: str, token: str | None, token_file: str | None, output: str) -> None:
    """Show the node that holds underlay address LOCATOR."""
    found = _run(url, token, token_file, lambda client: client.locate(locator))
    show_rows(output, "node", [found.node], ["tenant", "name", "network", "ip", "mac", "server"])


SERVER_COLUMNS = ["name", "pools", "created"]


@directory.group()
def server() -> None:
    """Enrolled servers (admin token): each publishes nodes only on its own locator pools."""


@server.command("enroll")
@click.argument("name")
@click.option(
    "--pool",
    "pools",
    multiple=True,
    required=True,
    metavar="CIDR|FIRST-LAST",
    help="a locator pool of the server (repeat for several); pools never overlap another's",
)
@click.option(
    "--credential-file",
    type=click.Path(dir_okay=False),
    help="write the server's credential here (mode 0600) instead of showing it",
)
@_client_options
def server_enroll(
    name: str,
    pools: tuple[str, ...],
    credential_file: str | None,
    url: str,
    token: str | None,
    token_file: str | None,
    output: str,
) -> None:
    """Enroll server NAME; its credential is shown (or written) once."""
    enrolled = _run(url, token, token_file, lambda c: c.enroll_server(name, list(pools)))
    row = enrolled.model_dump(mode="json")
    if credential_file:
        write_secret(Path(credential_file), enrolled.token)
        row["token"] = f"written to {credential_file}"
    show_rows(output, "server", [row], [*SERVER_COLUMNS, "token"])


@server.command("list")
@_client_options
def server_list(url: str, token: str | None, token_file: str | None, output: str) -> None:
    """List enrolled servers and their pools."""
    found = _run(url, token, token_file, DirectoryClient.list_servers)
    show_rows(output, "servers", found, SERVER_COLUMNS)


@server.command("show")
@click.argument("name")
@_client_options
def server_show(
    name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """Show server NAME."""
    found = _run(url, token, token_file, lambda c: c.get_server(name))
    show_rows(output, "server", [found], SERVER_COLUMNS)


@server.command("revoke")
@click.argument("name")
@_client_options
def server_revoke(
    name: str, url: str, token: str | None, token_file: str | None, output: str
) -> None:
    """Revoke server NAME's credential and withdraw the nodes it published."""
    withdrawn = _run(url, token, token_file, lambda c: c.revoke_server(name))
    show_rows(output, "withdrawn", withdrawn, ["tenant", "name", "ip", "locator"])


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
    if output == "json":
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
