"""`dcfleet host-pack`: run several host agents in one process (used by `dcfleet up --hosts-per-process`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._config import ConfigError
from ._packed import run_packed

COMMANDS = ("host-pack",)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "host-pack", help="run several host agents in one process (used by `dcfleet up`)",
        description="Run the named host agents in this one process, each with its own broker connection, "
        "credential and state, until SIGTERM or Ctrl-C. `dcfleet up --hosts-per-process K` starts these.",
    )
    parser.add_argument("--hosts", metavar="IDS", required=True, help="comma-separated host ids, e.g. h1,h2,h3")
    parser.add_argument("--state-dir", metavar="DIR", required=True, help="state dir of the cluster")


def run(args: argparse.Namespace) -> int:
    host_ids = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if not host_ids:
        raise ConfigError("--hosts names no host; pass e.g. --hosts h1,h2")
    if len(set(host_ids)) != len(host_ids):
        raise ConfigError(f"--hosts names a host twice: {args.hosts}")
    return run_packed(Path(args.state_dir), host_ids, args.log_level)
