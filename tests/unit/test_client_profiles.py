"""The client config: which profile is used, what overrides it, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvi.client.profiles import ProfileError, config_path, resolve

CONFIG = """
default = "red"
[profiles.red]
directory = ["https://198.51.100.5:7480", "https://198.51.100.6:7480"]
ca_file = "ca.crt"
token_file = "red.token"

[profiles.blue]
directory = "https://203.0.113.9:7480"
token = "nvi_blue"
"""


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "red.token").write_text("nvi_red\n")
    return {"NVI_CONFIG": str(tmp_path / "config.toml")}


def test_the_default_profile_with_paths_relative_to_the_file(
    home: dict[str, str], tmp_path: Path
) -> None:
    profile = resolve(env=home)
    assert profile.name == "red"
    assert profile.directory == ("https://198.51.100.5:7480", "https://198.51.100.6:7480")
    assert profile.ca_file == tmp_path / "ca.crt"
    assert profile.token == "nvi_red"


def test_a_named_profile_from_the_option_or_the_environment(home: dict[str, str]) -> None:
    assert resolve("blue", env=home).token == "nvi_blue"
    blue = resolve(env=home | {"NVI_PROFILE": "blue"})
    assert blue.directory == ("https://203.0.113.9:7480",)
    assert blue.ca_file is None
    assert resolve("red", env=home | {"NVI_PROFILE": "blue"}).name == "red"  # option first


def test_options_and_environment_override_the_profile(home: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "other.token").write_text("nvi_other")
    env = home | {"NVI_DIRECTORY": "https://192.0.2.1:7480", "NVI_TOKEN": "nvi_env"}
    profile = resolve(env=env, ca_file="/etc/ca.crt")
    assert profile.directory == ("https://192.0.2.1:7480",)
    assert profile.token == "nvi_env"
    assert profile.ca_file == Path("/etc/ca.crt")
    by_file = resolve(env=home, token_file=tmp_path / "other.token")
    assert by_file.token == "nvi_other"  # replaces the profile's token_file
    assert resolve("blue", env=home, token_file=tmp_path / "other.token").token == "nvi_other"


def test_no_file_and_no_profile_is_an_empty_profile(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert config_path(env) == tmp_path / ".config" / "nvi" / "config.toml"
    assert config_path(env | {"XDG_CONFIG_HOME": "/x"}) == Path("/x/nvi/config.toml")
    empty = resolve(env=env)
    assert (empty.name, empty.directory, empty.token) == (None, (), None)
    with pytest.raises(ProfileError, match="which directory"):
        empty.require()
    only = resolve(env=env, directory="https://192.0.2.1:7480")
    with pytest.raises(ProfileError, match="no credential"):
        only.require()


@pytest.mark.parametrize(
    ("content", "profile", "message"),
    [
        (CONFIG, "green", r"no profile green in .*config.toml \(profiles: blue, red\)"),
        ("default = [", None, r"config .*config.toml is not valid TOML: "),
        ("[profiles.red]\ndirectory='https://a'\n", None, "has no `default`"),
        ("default='r'\n[profiles.r]\ndirectory='http://a'\n", None, "speaks only https://"),
        ("default='r'\n[profiles.r]\ntoken_fil='x'\n", None, "unknown key token_fil"),
        ("default='r'\n[profiles.r]\ntoken_file='missing'\n", None, "cannot read token file"),
    ],
)
def test_one_line_errors(tmp_path: Path, content: str, profile: str | None, message: str) -> None:
    (tmp_path / "config.toml").write_text(content)
    with pytest.raises(ProfileError, match=message) as caught:
        resolve(profile, env={"NVI_CONFIG": str(tmp_path / "config.toml")})
    assert "\n" not in str(caught.value)


def test_a_named_profile_without_a_file_or_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no profile red: there is no config file"):
        resolve("red", env={"HOME": str(tmp_path)})
    with pytest.raises(ProfileError, match="cannot read config .*: No such file"):
        resolve(env={"NVI_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(ProfileError, match="cannot read config .*: Is a directory"):
        resolve(env={"NVI_CONFIG": str(tmp_path)})


def test_the_labs_client_config_is_read_as_written(tmp_path: Path) -> None:
    from nvi.lab.clientconfig import render

    (tmp_path / "red.token").write_text("nvi_red\n")
    (tmp_path / "admin.token").write_text("nvi_admin\n")
    text = render(
        "L",
        "https://198.51.100.2:7480",
        tmp_path / "ca.crt",
        tmp_path / "admin.token",
        {"red": tmp_path / "red.token"},
    )
    (tmp_path / "client.toml").write_text(text)
    env = {"NVI_CONFIG": str(tmp_path / "client.toml")}
    red = resolve(env=env)
    assert (red.name, red.token, red.ca_file) == ("L-red", "nvi_red", tmp_path / "ca.crt")
    assert red.directory == ("https://198.51.100.2:7480",)
    assert resolve(env=env | {"NVI_PROFILE": "L-admin"}).token == "nvi_admin"
