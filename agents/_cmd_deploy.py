"""`dcfleet deploy-config` and `dcfleet compose-agent`: the docker compose side of a cluster.

`deploy-config` writes the same cluster.json and state (boot banks, BMC
password) that `dcfleet up` writes, but with the compose broker names as the
bus. `compose-agent` is each agent container's entry point. A host container
claims the first free host slot of cluster.json with an exclusive lock on the
shared state volume, so `docker compose up --scale host=N` gives N distinct hosts.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
from pathlib import Path

from ._config import ClusterConfig, ConfigError

COMMANDS = ("deploy-config", "compose-agent")
COMPOSE_NATS_URLS = ("nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222")
AGENT_KINDS = ("host", "bmc", "dpu", "migration", "power")


def add_parser(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser(
        "deploy-config", help="write a cluster.json and state for docker compose",
        description="Write <state dir>/cluster.json, boot banks and the BMC password for a cluster whose "
        "brokers are the compose services nats-1..3. Run once before the agents start (the compose "
        "file's `config` service does).",
    )
    config.add_argument("--state-dir", metavar="DIR", required=True, help="state dir shared by the agent containers")
    config.add_argument("--hosts", type=int, default=3, help="number of host slots; match --scale host=N (default: 3)")
    config.add_argument("--vms", type=int, default=None, help="number of VMs (default: 4 per host)")
    config.add_argument("--nats-urls", default=",".join(COMPOSE_NATS_URLS),
                        help="comma-separated broker URLs (default: the compose services nats-1..3)")
    config.add_argument("--force", action="store_true", help="replace an existing cluster.json")

    agent = commands.add_parser(
        "compose-agent", help="run one agent in a container (the compose entry point)",
        description="Run one agent of the cluster in --state-dir. A host agent takes the first host slot "
        "that no other container holds and keeps it locked while it runs.",
    )
    agent.add_argument("kind", choices=AGENT_KINDS)
    agent.add_argument("--state-dir", metavar="DIR", required=True, help="state dir shared by the agent containers")


def run(args: argparse.Namespace) -> int:
    if args.command == "deploy-config":
        return write_deploy_config(args)
    return run_compose_agent(args)


def write_deploy_config(args: argparse.Namespace) -> int:
    from . import _up

    state_dir = Path(args.state_dir)
    if (state_dir / "cluster.json").exists() and not args.force:
        print(f"dcfleet: {state_dir / 'cluster.json'} exists; keeping it (pass --force to replace it)")
        return 0
    urls = [u.strip() for u in args.nats_urls.split(",") if u.strip()]
    if not urls:
        raise ConfigError("--nats-urls names no broker")
    state_dir.mkdir(parents=True, exist_ok=True)
    options = _up.UpOptions(state_dir=state_dir, hosts=args.hosts, vms=args.vms, nats_url=urls[0])
    config = _up.build_config(options)
    config.nats_urls = urls
    config.event_replicas = len(urls)
    config.supervisor_pid = 0
    _up.prepare_state(config)
    config.save()
    print(f"dcfleet: wrote {config.path}: {len(config.hosts)} hosts, {len(config.vms)} VMs, brokers {', '.join(urls)}")
    return 0


def claim_host_slot(config: ClusterConfig) -> tuple[str, int]:
    """Lock the first free host slot; return its id and the lock's file descriptor (kept open)."""
    claims = Path(config.state_dir) / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    for host in config.hosts:
        fd = os.open(claims / f"{host.id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        return host.id, fd
    raise ConfigError(
        f"all {len(config.hosts)} host slots of {config.path} are taken; "
        "regenerate it with `dcfleet deploy-config --hosts N --force` to match --scale host=N"
    )


def run_compose_agent(args: argparse.Namespace) -> int:
    from ._runner import run_agent

    config = ClusterConfig.load(Path(args.state_dir))
    agent_id = None
    if args.kind == "host":
        agent_id, _lock_fd = claim_host_slot(config)
        print(f"dcfleet: container {socket.gethostname()} runs host {agent_id}", flush=True)
    return run_agent(args.kind, agent_id, Path(args.state_dir), args.log_level)
