"""The `nvi` command's conventions, and its one-line errors before anything is reached."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from nvi.cli import main
from nvi.core.clitools import show_rows

CLEAN = {
    key: None
    for key in (
        "NVI_CONFIG",
        "NVI_PROFILE",
        "NVI_DIRECTORY",
        "NVI_CA_FILE",
        "NVI_TOKEN",
        "NVI_TOKEN_FILE",
        "NVI_AGENT",
        "NVI_TENANT",
    )
}


def run(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=CLEAN | (env or {}), prog_name="nvi")
    return result.exit_code, result.stdout, result.stderr


def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        assert sub is not None
        if isinstance(sub, click.Group):
            found += commands(sub, f"{prefix}{name} ")
        else:
            found.append((prefix + name, sub))
    return found


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("nvi ") and out.split()[1][0].isdigit()


def test_completion_script_for_bash_and_zsh() -> None:
    code, out, _ = run(env={"_NVI_COMPLETE": "bash_source"})
    assert code == 0
    assert "_nvi_completion()" in out and "complete -o nosort -F _nvi_completion nvi" in out
    code, out, _ = run(env={"_NVI_COMPLETE": "zsh_source"})
    assert code == 0 and "#compdef nvi" in out


def test_completion_completes_the_lazy_groups() -> None:
    env = {"_NVI_COMPLETE": "bash_complete", "COMP_WORDS": "nvi no", "COMP_CWORD": "1"}
    code, out, _ = run(env=env)
    assert code == 0 and "plain,node" in out.split()
    env |= {"COMP_WORDS": "nvi directory token ", "COMP_CWORD": "3"}
    assert {"plain,create", "plain,list", "plain,revoke"} <= set(run(env=env)[1].split())


def test_every_command_with_output_offers_table_json_and_yaml() -> None:
    with_output = 0
    for name, command in commands(main):
        for param in command.params:
            if param.name == "output":
                with_output += 1
                assert isinstance(param.type, click.Choice), name
                assert list(param.type.choices) == ["table", "json", "yaml"], name
    assert with_output > 30


def test_every_users_command_takes_a_profile() -> None:
    users = ("directory", "node", "server", "image")
    service = {
        "directory serve",
        "directory init",
        "directory credential",
        "directory audit",
        "directory openapi",
    }
    for name, command in commands(main):
        if name.split()[0] in users and name not in service:
            assert "profile" in [p.name for p in command.params], name


def test_yaml_is_the_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"name": "web", "ready": True, "cpus": 1.5, "kinds": ["container"]}]
    show_rows("yaml", "nodes", rows, ["name"])
    assert yaml.safe_load(capsys.readouterr().out) == rows


def test_the_old_credential_names_are_gone() -> None:
    for name, command in commands(main):
        for param in command.params:
            envvar = getattr(param, "envvar", None) or ""
            assert "TENANT_TOKEN" not in envvar and "DIRECTORY_TOKEN" not in envvar, name
            assert "--url" not in getattr(param, "opts", []), name


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["server", "list"], {"NVI_PROFILE": "green"}, "nvi: no profile green: there is no config"),
        (["node", "list", "--profile", "green"], {}, "nvi: no profile green in "),
        (["server", "list"], {}, "nvi: profile red: no credential"),
        (["server", "list", "--token-file", "/nonexistent.token"], {}, "nvi: cannot read token"),
        (
            ["server", "list", "--directory", "http://x"],
            {},
            "nvi: directory http://x: the directory speaks only https://",
        ),
        (
            ["node", "create", "red/web", "-n", "net", "--agent", "/x.sock", "--server", "s1"],
            {},
            "nvi: --server and --cloud choose through the directory, not with --agent",
        ),
        (["node", "show", "web", "--agent", "/x.sock"], {}, "nvi: which tenant's web?"),
    ],
)
def test_one_line_errors(
    tmp_path: Path, args: list[str], env: dict[str, str | None], message: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('default = "red"\n[profiles.red]\ndirectory = "https://192.0.2.1:7480"\n')
    settings: dict[str, str | None] = {"NVI_CONFIG": str(config)}
    if env.get("NVI_PROFILE"):
        settings = {"HOME": str(tmp_path / "nobody")}
    code, out, err = run(*args, env=settings | env)
    assert code == 1, (out, err)
    assert err.startswith(message), err
    assert err.count("\n") == 1


def test_a_bad_config_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("default = [\n")
    code, _, err = run("server", "list", env={"NVI_CONFIG": str(config)})
    assert (
        code == 1
        and err.startswith(f"nvi: config {config} is not valid TOML")
        and err.count("\n") == 1
    )
