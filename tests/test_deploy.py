"""docker-compose.yml and deploy/Dockerfile, checked statically (no Docker engine runs here)."""

import json
import shlex
import subprocess
import tomllib

import pytest

from _support import REPO, dcfleet_command
from agents._cmd_deploy import claim_host_slot
from agents._config import ClusterConfig, ConfigError
from agents.cli import AGENT_KINDS

# PyYAML is not installed, so the compose file is written in the JSON subset of
# YAML 1.2, which docker compose reads as YAML and json reads here.
COMPOSE = json.loads((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def dockerfile_instructions():
    lines = (REPO / "deploy" / "Dockerfile").read_text().splitlines()
    return [line.split(None, 1) for line in lines if line.strip() and not line.startswith("#")]


def test_compose_builds_from_deploy_dockerfile():
    builds = [s["build"] for s in SERVICES.values() if "build" in s]
    assert builds == [{"context": ".", "dockerfile": "deploy/Dockerfile"}]
    assert (REPO / builds[0]["context"] / builds[0]["dockerfile"]).is_file()
    images = {s["image"] for s in SERVICES.values()}
    assert images == {"dcfleet:local"}


def test_compose_has_three_routed_jetstream_brokers():
    brokers = [name for name in SERVICES if name.startswith("nats-")]
    assert brokers == ["nats-1", "nats-2", "nats-3"]
    for name in brokers:
        conf = SERVICES[name]["command"][-1].replace("/etc/dcfleet/", "deploy/")
        text = (REPO / conf).read_text()
        assert f'"dcfleet-{name[-1]}"' in text
        assert '"store_dir": "/data"' in text
        others = {f"nats-route://{other}:6222" for other in brokers if other != name}
        assert all(route in text for route in others)


def test_compose_agent_services_are_real_kinds():
    agents = {name: s["command"] for name, s in SERVICES.items() if s["command"][0] == "compose-agent"}
    assert set(agents) == set(AGENT_KINDS)
    for name, command in agents.items():
        assert command[1] == name
        assert command[1] in AGENT_KINDS


def test_compose_commands_are_dcfleet_subcommands():
    for name, service in SERVICES.items():
        if service.get("entrypoint") == ["nats-server"]:
            continue
        argv = [a.replace("${DCFLEET_HOSTS:-3}", "3") for a in service["command"]]
        result = subprocess.run(dcfleet_command(*argv[:2], "--help") if argv[0] == "compose-agent"
                                else dcfleet_command(argv[0], "--help"), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (name, result.stderr)


def test_dockerfile_copies_existing_files():
    copies = [shlex.split(rest)[:-1] for op, rest in dockerfile_instructions() if op == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source


def test_dockerfile_config_files_match_compose():
    copied = {f"/etc/dcfleet/{source.rpartition('/')[2]}"
              for op, rest in dockerfile_instructions() if op == "COPY"
              for source in shlex.split(rest)[:-1] if source.startswith("deploy/")}
    used = {SERVICES[name]["command"][-1] for name in ("nats-1", "nats-2", "nats-3")}
    assert used <= copied


def test_dockerfile_entrypoint_is_the_dcfleet_script():
    entrypoints = [json.loads(rest) for op, rest in dockerfile_instructions() if op == "ENTRYPOINT"]
    assert entrypoints == [["dcfleet"]]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dcfleet"] == "agents.cli:main"


def test_deploy_config_writes_compose_cluster(tmp_path):
    state = tmp_path / "state"
    result = subprocess.run(dcfleet_command("deploy-config", "--state-dir", str(state), "--hosts", "2", "--vms", "0"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    config = ClusterConfig.load(state)
    assert config.nats_urls == ["nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"]
    assert config.event_replicas == 3
    assert [h.id for h in config.hosts] == ["h1", "h2"]


def test_host_containers_claim_distinct_slots(tmp_path):
    config = ClusterConfig(state_dir=str(tmp_path), nats_url="nats://nats-1:4222", epoch=0.0, time_scale=1.0,
                           hosts=[], vms=[])
    from agents._config import HostConfig

    config.hosts = [HostConfig(id=f"h{i}", model="ML110G4", cores=2, mips_per_core=1860.0,
                               memory_bytes=2**28, bmc_port=0) for i in (1, 2)]
    first, first_fd = claim_host_slot(config)
    second, second_fd = claim_host_slot(config)
    assert (first, second) == ("h1", "h2")
    with pytest.raises(ConfigError):
        claim_host_slot(config)
