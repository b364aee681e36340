"""The `dcfleet` command line."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from pathlib import Path

from . import _log
from ._config import ConfigError, default_state_dir, parse_size_bytes
from ._nats_server import NatsServerError
from ._workload import TraceError

AGENT_KINDS = ("host", "bmc", "dpu", "migration", "power")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _size_bytes(text: str) -> int:
    try:
        return parse_size_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", metavar="DIR",
        help=f"state dir of the cluster (default: {default_state_dir()}, or $DCFLEET_STATE_DIR)",
    )
    parser.add_argument("--nats", metavar="URL", help="broker URL; overrides the one recorded in the state dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcfleet",
        description="Emulate a virtualized datacenter's control plane: host, BMC, DPU, migration and "
        "power agents as separate processes on a NATS bus.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up", help="start a cluster and supervise it until Ctrl-C or --duration",
        description="Start a broker (unless --nats) and every agent as its own process, print a live "
        "summary, and stop everything on Ctrl-C, SIGTERM or when --duration ends. Each run "
        "replaces the event history kept in the state dir.",
    )
    up.add_argument("--hosts", type=_positive_int, default=3, help="number of hosts (default: 3)")
    up.add_argument("--vms", type=int, default=None,
                    help="number of VMs, one per trace file (default: 4 per host, at most the files in --trace)")
    up.add_argument("--trace", metavar="DIR", type=Path,
                    help="directory of PlanetLab-format CPU traces (default: the shipped 34-VM sample)")
    up.add_argument("--time-scale", type=_positive_float, default=300.0,
                    help="simulated seconds per real second (default: 300, one trace step per second)")
    up.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                    help="stop after this many real seconds (default: run until Ctrl-C)")
    up.add_argument("--vm-memory", type=_size_bytes, default=4 * 1024**2, metavar="SIZE",
                    help="bytes of real memory per VM, e.g. 4M (default: 4M)")
    up.add_argument("--host-memory", type=_size_bytes, default=256 * 1024**2, metavar="SIZE",
                    help="memory per host available to VMs, e.g. 256M (default: 256M)")
    up.add_argument("--arch", choices=("aarch64", "x86_64", "mixed"), default="aarch64",
                    help="host CPU architecture, which sets each host's memory map and page-table "
                    "format; mixed alternates aarch64 (h1, h3, ...) and x86_64 (default: aarch64)")
    up.add_argument("--power-interval", type=_positive_float, default=3.0, metavar="SECONDS",
                    help="real seconds between power evaluations (default: 3)")
    up.add_argument("--power-automation", choices=("Off", "Manual", "Automatic"), default="Automatic",
                    help="Off: no power recommendations; Manual: publish them only; Automatic: carry them out "
                    "(default: Automatic)")
    up.add_argument("--power-threshold", type=int, choices=range(1, 6), default=3,
                    help="act on recommendations of priority 1..N, 1 conservative, 5 aggressive (default: 3)")
    up.add_argument("--power-target", type=float, default=0.63,
                    help="target host utilization, 0..1 (default: 0.63)")
    up.add_argument("--power-tolerance", type=float, default=0.18,
                    help="half-width of the band around the target (default: 0.18)")
    up.add_argument("--min-hosts-on", type=_positive_int, default=1, help="hosts always kept on (default: 1)")
    _fleet_options().add_up_options(up)
    add_cluster_options(up)

    events = commands.add_parser(
        "events", help="print the cluster's event stream",
        description="Print events from the cluster's durable stream, while it runs or after it stopped.",
    )
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--type", metavar="PATTERN", help="only event types matching this glob, e.g. 'host.*'")
    add_cluster_options(events)

    for module in _feature_modules():
        module.add_parser(commands)

    agent = commands.add_parser("agent", help="run one agent process (used by `dcfleet up`)")
    agent.add_argument("kind", choices=AGENT_KINDS)
    agent.add_argument("--id", help="agent id; for a host agent, the host id (e.g. h1)")
    agent.add_argument("--state-dir", metavar="DIR", required=True, help="state dir of the cluster")
    return parser


# Modules that each add one or more subcommands: `add_parser(commands)` registers
# them and `run(args) -> int` runs one (args.command names it).
FEATURE_COMMANDS: tuple[str, ...] = ("agents._cmd_boot", "agents._cmd_replay", "agents._cmd_power",
                                     "agents._cmd_keys_bus", "agents._cmd_packed", "agents._cmd_deploy",
                                     "agents._cmd_pagetable", "agents._cmd_chaos", "agents._cmd_dpu",
                                     "agents._cmd_migrate")


def _fleet_options():
    from . import _fleet

    return _fleet


def _feature_modules() -> list:
    import importlib

    return [importlib.import_module(name) for name in FEATURE_COMMANDS]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log.quiet_tls_close()
    try:
        return _dispatch(args)
    except (ConfigError, TraceError, NatsServerError) as exc:
        print(f"dcfleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`); exit without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _power_settings(args: argparse.Namespace) -> dict:
    """PowerConfig fields set by `dcfleet up` options."""
    return {
        "automation": args.power_automation, "threshold": args.power_threshold,
        "target_utilization": args.power_target, "tolerance": args.power_tolerance,
        "min_hosts_on": args.min_hosts_on,
    }


def _dispatch(args: argparse.Namespace) -> int:
    from ._locate import resolve_state_dir

    if args.command == "up":
        from ._up import UpOptions, run

        _log.configure(args.log_level, agent="up")
        options = UpOptions(
            state_dir=resolve_state_dir(args.state_dir), hosts=args.hosts, vms=args.vms,
            trace_dir=args.trace, time_scale=args.time_scale, duration_s=args.duration,
            nats_url=args.nats, vm_memory_bytes=args.vm_memory, host_memory_bytes=args.host_memory,
            power_interval_s=args.power_interval, power_settings=_power_settings(args), arch=args.arch, **_fleet_options().up_option_values(args),
        )
        return run(options)
    if args.command == "events":
        from ._events import print_events

        try:
            return asyncio.run(print_events(args.state_dir, args.nats, args.follow, args.json, args.type))
        except KeyboardInterrupt:
            return 0
    if args.command == "agent":
        from ._runner import run_agent

        return run_agent(args.kind, args.id, Path(args.state_dir), args.log_level)
    for module in _feature_modules():
        if args.command in module.COMMANDS:
            return module.run(args)
    raise AssertionError(args.command)
