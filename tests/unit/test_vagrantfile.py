"""The Vagrant lab (Vagrantfile) cannot boot here; these tests keep it valid and in step with the
scripts it runs: Ruby syntax, the machines NVI_SERVERS asks for (read through a tiny stub of
`Vagrant.configure`), the README's set-up script first on every VM, every referenced script
present and parseable, one underlay, each server given only its own facts, each server enrolled
once (its triggers fired against fake machines) with its own credential, and the configs the
provisioning scripts write accepted by NVI's own loaders."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import netaddr
import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANTFILE = ROOT / "Vagrantfile"
REPO_IN_VM = "/vagrant"

# Records what a Vagrantfile asks of Vagrant: every call with its arguments, the machines that
# `config.vm.define` makes, and the calls inside each machine's block. A trigger's Ruby block is
# kept, not run; with STUB_FIRE=before:up (say) the stub then fires each machine's matching
# triggers in order, as `vagrant up` would, against fake machines whose `communicate.sudo`
# records the command and answers on stdout with a fresh secret.
STUB = r"""
require "json"
require "securerandom"

class Recorder
  def initialize(log, machines, path = [])
    @log, @machines, @path = log, machines, path
  end

  def method_missing(name, *args, **options, &block)
    path = @path + [name.to_s]
    if path == %w[vm define]
      calls = []
      @machines << { "name" => args[0].to_s, "options" => options, "calls" => calls }
      block&.call(Recorder.new(calls, @machines))
      return nil
    end
    return Recorder.new(@log, @machines, path) if args.empty? && options.empty? && block.nil?

    entry = { "call" => path.join("."), "args" => args, "options" => options }
    @log << entry
    if name == :ruby
      entry["ruby"] = Vagrant::BLOCKS.length
      Vagrant::BLOCKS << block
    elsif block
      entry["block"] = []
      block.call(Recorder.new(entry["block"], @machines))
    end
    nil
  end

  def respond_to_missing?(*)
    true
  end
end

class FakeCommunicator
  def initialize(name)
    @name = name
  end

  def ready?
    true
  end

  def sudo(command)
    Vagrant::SUDO << { "machine" => @name, "command" => command }
    if command.start_with?("cat ")
      yield :stdout, "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"
    else
      yield :stdout, "nvi_#{SecureRandom.hex(16)}\n"
    end
  end
end

FakeMachine = Struct.new(:name) do
  def provider_name
    :libvirt
  end

  def communicate
    FakeCommunicator.new(name.to_s)
  end
end

class FakeEnv
  def machine(name, provider)
    raise "unexpected provider #{provider}" unless provider == :libvirt

    FakeMachine.new(name)
  end
end

module Vagrant
  GLOBAL = []
  MACHINES = []
  BLOCKS = []
  SUDO = []

  def self.configure(version)
    raise "unexpected Vagrant config version #{version}" unless version == "2"

    yield Recorder.new(GLOBAL, MACHINES)
  end
end

load ARGV[0]
if ENV["STUB_FIRE"]
  stage, action = ENV["STUB_FIRE"].split(":")
  Vagrant::MACHINES.each do |machine|
    machine["calls"].each do |entry|
      next unless entry["call"] == "trigger.#{stage}"
      next unless entry["args"].flatten.map(&:to_s).include?(action)

      entry["block"].select { |e| e.key?("ruby") }.each do |ruby|
        Vagrant::BLOCKS[ruby["ruby"]].call(FakeEnv.new, FakeMachine.new(machine["name"].to_sym))
      end
    end
  end
end
puts JSON.generate(
  { "global" => Vagrant::GLOBAL, "machines" => Vagrant::MACHINES, "sudo" => Vagrant::SUDO }
)
"""


def _ruby() -> str:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.fail("ruby is missing: scripts/setup installs it")
    return ruby


def load(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Evaluate a copy of the Vagrantfile in tmp_path (its triggers keep credentials beside it)."""
    shutil.copy(VAGRANTFILE, tmp_path / "Vagrantfile")
    (tmp_path / "stub.rb").write_text(STUB)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NVI_")}
    return subprocess.run(
        [_ruby(), "stub.rb", "Vagrantfile"],
        cwd=tmp_path,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def recorded(tmp_path: Path, **env: str) -> dict:
    result = load(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def calls(entries: list[dict], name: str) -> list[dict]:
    return [entry for entry in entries if entry["call"] == name]


def shell_commands(entries: list[dict]) -> list[str]:
    return [
        entry["options"]["inline"]
        for entry in calls(entries, "vm.provision")
        if entry["options"].get("type") == "shell"
    ]


def network(machine: dict) -> dict:
    (net,) = calls(machine["calls"], "vm.network")
    assert net["args"] == ["private_network"]
    return net["options"]


def provision_args(machine: dict, script: str) -> dict[str, str]:
    """`--option value` pairs of the machine's call of /vagrant/scripts/<script>."""
    (command,) = [c for c in shell_commands(machine["calls"]) if f"scripts/{script} " in c]
    words = shlex.split(command.split("&&")[0])
    assert words[0] == f"{REPO_IN_VM}/scripts/{script}"
    args, rest = {}, words[1:]
    while rest:
        key = rest.pop(0)
        assert key.startswith("--"), command
        args[key] = rest.pop(0) if rest and not rest[0].startswith("--") else ""
    return args


def readme_setup_script() -> str:
    """The set-up script the README tells people to run."""
    readme = (ROOT / "README.md").read_text()
    if re.search(r"scripts/setup(?![-\w])", readme) or re.search(
        r"`scripts/`\s*\|\s*`setup`", readme
    ):
        return "scripts/setup"
    pytest.fail("README.md names no scripts/setup")


def test_ruby_syntax() -> None:
    result = subprocess.run(
        [_ruby(), "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stdout


@pytest.mark.parametrize("count", [None, "1", "5"])
def test_host_count_comes_from_nvi_servers(tmp_path: Path, count: str | None) -> None:
    env = {"NVI_SERVERS": count} if count else {}
    machines = recorded(tmp_path, **env)["machines"]
    servers = int(count or 2)
    assert [m["name"] for m in machines] == ["directory", *(f"s{i}" for i in range(1, servers + 1))]


@pytest.mark.parametrize("count", ["0", "201", "two", "3 "])
def test_bad_host_count_is_refused(tmp_path: Path, count: str) -> None:
    result = load(tmp_path, NVI_SERVERS=count)
    assert result.returncode != 0
    assert "NVI_SERVERS must be a number from 1 to 200" in result.stderr


def test_libvirt_provider_and_the_repository_in_every_vm(tmp_path: Path) -> None:
    config = recorded(tmp_path)["global"]
    (provider,) = calls(config, "vm.provider")
    assert provider["args"] == ["libvirt"]
    (folder,) = calls(config, "vm.synced_folder")
    assert folder["args"] == [".", REPO_IN_VM]  # /vagrant/scripts/... is this repository's


def test_every_vm_first_runs_the_readmes_setup(tmp_path: Path) -> None:
    script = readme_setup_script()
    data = recorded(tmp_path, NVI_SERVERS="3")
    first = calls(data["global"], "vm.provision")[0]
    # Global provisioners run before each machine's own, on every machine.
    assert first["options"] == {"type": "shell", "inline": f"{REPO_IN_VM}/{script}"}
    for machine in data["machines"]:
        assert not any(script in c.split()[0] for c in shell_commands(machine["calls"])), (
            "set-up runs once, from the global provisioner"
        )


def test_every_referenced_script_exists_and_parses(tmp_path: Path) -> None:
    data = recorded(tmp_path, NVI_SERVERS="2", NVI_VMS="1")
    commands = shell_commands(data["global"]) + [
        c for m in data["machines"] for c in shell_commands(m["calls"])
    ]
    scripts = {
        match for c in commands for match in re.findall(rf"{REPO_IN_VM}/(scripts/[\w.-]+)", c)
    }
    assert {"scripts/setup", "scripts/provision-directory", "scripts/provision-server"} <= scripts
    # ... and the scripts those call in turn ($root/scripts/...).
    for name in sorted(scripts):
        scripts |= set(re.findall(r"\$root/(scripts/[\w.-]+)", (ROOT / name).read_text()))
    assert "scripts/setup-vm" in scripts
    for name in sorted(scripts):
        path = ROOT / name
        assert path.is_file(), f"{name} is referenced but missing"
        assert path.stat().st_mode & stat.S_IXUSR, f"{name} is not executable"
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"


def test_one_isolated_underlay(tmp_path: Path) -> None:
    machines = recorded(tmp_path, NVI_SERVERS="4")["machines"]
    nets = [network(m) for m in machines]
    for net in nets:
        assert net["libvirt__network_name"] == "nvi-underlay"
        assert net["libvirt__forward_mode"] == "none"
        assert net["libvirt__dhcp_enabled"] is False
        assert net["netmask"] == net["libvirt__netmask"] == "255.255.0.0"
        assert net["mac"] == net["mac"].lower()
    assert len({n["ip"] for n in nets}) == len({n["mac"] for n in nets}) == len(machines)
    directory, *servers = nets
    assert directory["auto_config"] is True  # a plain host: Vagrant sets its address
    assert all(n["auto_config"] is False for n in servers)  # the address goes on br-int


def test_each_server_is_given_only_its_own_facts(tmp_path: Path) -> None:
    directory, *servers = recorded(tmp_path, NVI_SERVERS="6")["machines"]
    underlay = ipaddress.ip_network(f"{network(directory)['ip']}/255.255.0.0", strict=False)
    addresses = {m["name"]: network(m)["ip"] for m in [directory, *servers]}
    assert provision_args(directory, "provision-directory")["--address"] == addresses["directory"]
    pools: list[netaddr.IPSet] = []
    for server in servers:
        args = provision_args(server, "provision-server")
        net = network(server)
        assert args["--name"] == server["name"]
        assert args["--address"] == f"{net['ip']}/{underlay.prefixlen}"
        assert args["--uplink"] == net["mac"]
        assert args["--directory"] == f"https://{addresses['directory']}:7480"
        pool = netaddr.IPSet(netaddr.IPNetwork(args["--locators"]))
        assert pool.issubset(netaddr.IPSet([str(underlay)])), "locators on the underlay segment"
        assert not pool & netaddr.IPSet(addresses.values()), "no locator is a machine's address"
        assert all(not pool & other for other in pools), "pools do not overlap"
        pools.append(pool)
        others = [a for name, a in addresses.items() if name not in (server["name"], "directory")]
        command = " ".join(shell_commands(server["calls"]))
        assert not any(re.search(rf"\b{re.escape(a)}\b", command) for a in others)


def uploads(machine: dict) -> list[dict]:
    return [
        e["options"]
        for e in calls(machine["calls"], "vm.provision")
        if e["options"].get("type") == "file"
    ]


def test_each_server_is_enrolled_once_with_its_pool_and_gets_its_own_credential(
    tmp_path: Path,
) -> None:
    data = recorded(tmp_path, NVI_SERVERS="3", STUB_FIRE="before:up")
    directory, *servers = data["machines"]
    credentials = tmp_path / ".vagrant" / "nvi"
    # The operator's step runs on the directory VM, where provisioning left the admin token;
    # its CA is fetched from there once.
    assert [e["machine"] for e in data["sudo"]] == ["directory"] * 4
    state = provision_args(directory, "provision-directory")["--state-dir"]
    assert data["sudo"][0]["command"] == f"cat {state}/ca.crt"
    for server, enrolment in zip(servers, data["sudo"][1:], strict=True):
        words = shlex.split(enrolment["command"])
        assert words[0] == f"{REPO_IN_VM}/scripts/enroll-server"
        args = dict(zip(words[1::2], words[2::2], strict=True))
        provision = provision_args(server, "provision-server")
        assert args["--name"] == server["name"]
        assert args["--pool"] == provision["--locators"]
        assert args["--url"] == provision["--directory"]
        assert (
            args["--state-dir"] == provision_args(directory, "provision-directory")["--state-dir"]
        )
        (trigger,) = calls(server["calls"], "trigger.before")
        assert sorted(trigger["args"][0]) == ["provision", "reload", "up"]
    tokens = {path.name: path.read_text().strip() for path in sorted(credentials.glob("*.token"))}
    assert list(tokens) == ["s1.token", "s2.token", "s3.token"]
    assert len(set(tokens.values())) == 3, "two servers never share a credential"
    for path in credentials.glob("*.token"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert uploads(directory) == []
    for server in servers:
        credential, ca = uploads(server)
        assert credential["source"] == str(credentials / f"{server['name']}.token")
        assert ca["source"] == str(credentials / "ca.crt")
        args = provision_args(server, "provision-server")
        assert args["--credential-file"] == credential["destination"]
        assert args["--ca-file"] == ca["destination"]
    # A kept credential is reused: no second enrolment, the same secrets.
    assert recorded(tmp_path, NVI_SERVERS="3", STUB_FIRE="before:up")["sudo"] == []
    assert {p.name: p.read_text().strip() for p in sorted(credentials.glob("*.token"))} == tokens
    # A destroyed directory forgets every server and its CA: their files go too.
    recorded(tmp_path, NVI_SERVERS="3", STUB_FIRE="after:destroy")
    assert list(credentials.iterdir()) == []


def provision_server(args: dict[str, str], out: Path) -> None:
    """scripts/provision-server --config-only OUT (the same files, checked, nothing started)."""
    result = subprocess.run(
        [str(ROOT / "scripts/provision-server"), *sum(args.items(), ()), "--config-only", str(out)],
        env={**os.environ, "NVI_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_provisioning_writes_configs_nvi_accepts(tmp_path: Path) -> None:
    """What the provisioning scripts write for a Vagrant lab's directory and servers
    (--config-only) loads with NVI's own loaders; each server's controller and agent present
    that server's own credential, and nothing a server is given names another server."""
    from federation.config import load_config as load_directory
    from hostagent.config import load_config as load_agent
    from openflow.service import load_config as load_controller

    lab = tmp_path / "lab"
    lab.mkdir()
    directory, *servers = recorded(lab, NVI_SERVERS="2", STUB_FIRE="before:up")["machines"]
    env = {**os.environ, "NVI_PYTHON": sys.executable}

    args = provision_args(directory, "provision-directory")
    state = tmp_path / "directory"
    run = [str(ROOT / "scripts/provision-directory"), *sum(args.items(), ())]
    run[run.index("--state-dir") + 1] = str(state)
    for _ in range(2):  # a second run changes nothing
        result = subprocess.run(
            [*run, "--config-only", str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    config = load_directory(state / "directory.toml")
    assert config.host == network(directory)["ip"]
    # The admin token stays where scripts/enroll-server looks for it, readable by root only.
    assert stat.S_IMODE((state / "admin.token").stat().st_mode) == 0o600
    assert len(config.auth.admin_token_sha256) == 1

    written: dict[str, str] = {}
    for server in servers:
        name = server["name"]
        args = provision_args(server, "provision-server")
        args["--credential-file"] = str(lab / ".vagrant" / "nvi" / f"{name}.token")
        args["--ca-file"] = str(state / "ca.crt")  # the directory's, as the VM fetched it
        args["--uplink"] = "eth1"  # a MAC is resolved on the server itself
        out = tmp_path / name
        provision_server(args, out)
        controller = load_controller(out / "controller.toml")
        address = network(server)["ip"]
        assert controller.address == address
        assert controller.directory == args["--directory"]
        assert controller.uplink == "eth1"
        agent = load_agent(out / "agent.toml")
        assert (agent.name, agent.underlay, agent.locators) == (name, address, args["--locators"])
        assert agent.directory.url == args["--directory"]
        assert agent.vm.enabled is False
        assert controller.token_file == agent.directory.credential_file == out / "server.token"
        assert controller.ca_file == agent.directory.ca_file == out / "ca.crt"
        assert (out / "ca.crt").read_bytes() == (state / "ca.crt").read_bytes()
        assert stat.S_IMODE(controller.token_file.stat().st_mode) == 0o600
        assert agent.directory.credential() == Path(args["--credential-file"]).read_text().strip()
        assert "NVI_ADDRESS=" + args["--address"] in (out / "server.env").read_text()
        # The CA is the same public file for every server.
        written[name] = "\n".join(
            path.read_text() for path in sorted(out.iterdir()) if path.name != "ca.crt"
        )
    (s1, s1_args), (s2, s2_args) = (
        (m["name"], provision_args(m, "provision-server")) for m in servers
    )
    s1_token, s2_token = ((tmp_path / n / "server.token").read_text().strip() for n in (s1, s2))
    assert s1_token != s2_token
    for name, other, other_args, other_token in (
        (s1, s2, s2_args, s2_token),
        (s2, s1, s1_args, s1_token),
    ):
        for fact in (other, other_args["--address"].split("/")[0], other_args["--locators"]):
            assert not re.search(rf"\b{re.escape(fact)}\b", written[name]), (name, fact)
        assert other_token not in written[name]


def test_provision_server_refuses_bad_facts(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("nvi_x\n")
    base = {
        "--name": "s1",
        "--address": "10.250.0.11/16",
        "--locators": "10.250.1.0/24",
        "--directory": "https://10.250.0.2:7480",
        "--credential-file": str(token),
        "--uplink": "eth1",
    }
    empty = tmp_path / "empty"
    empty.write_text("")
    cases = {
        "--credential-file": (str(empty), "enroll the server first"),
        "--address": ("10.250.0.11", "give the underlay prefix"),
        "--locators": ("10.250.0.0/24", "contains the server's own address"),
        "--directory": ("http://10.250.0.2:7480", "the directory speaks HTTPS only"),
    }
    env = {**os.environ, "NVI_PYTHON": sys.executable}
    for key, (value, reason) in cases.items():
        args = {**base, key: value}
        result = subprocess.run(
            [str(ROOT / "scripts/provision-server"), *sum(args.items(), ())]
            + ["--config-only", str(tmp_path / key.strip("-"))],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0, key
        assert reason in result.stderr, result.stderr
