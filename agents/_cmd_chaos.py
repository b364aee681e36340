"""`dcfleet chaos run`, `dcfleet check`, and the process, broker, network and BMC kinds of `dcfleet inject`.

`dcfleet inject` itself is registered in _cmd_boot.py, which adds these kinds with
add_fault_parsers() and hands them to run_fault().
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from ._config import ConfigError

COMMANDS = ("chaos", "check")
FAULT_KINDS = ("kill", "restart", "pause", "cut", "bmc")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def add_fault_parsers(kinds: argparse._SubParsersAction) -> None:
    """Add the process, broker and BMC faults to `dcfleet inject`."""
    from .cli import add_cluster_options

    for name, text in (("kill", "SIGKILL a process; `dcfleet up` restarts it"),
                       ("restart", "SIGTERM an agent so it stops cleanly; `dcfleet up` restarts it")):
        parser = kinds.add_parser(name, help=text, description=text + ".")
        parser.add_argument("target", help="process name: host-h1, bmc, dpu, migration, power or broker")
        add_cluster_options(parser)
    pause = kinds.add_parser("pause", help="SIGSTOP a process, then SIGCONT it after --for seconds")
    pause.add_argument("target", help="process name: host-h1, bmc, dpu, migration, power or broker")
    pause.add_argument("--for", dest="duration_s", type=_seconds, default=3.0, metavar="SECONDS",
                       help="how long the process stays stopped (default: 3)")
    add_cluster_options(pause)
    cut = kinds.add_parser(
        "cut", help="take an agent's network link down, then up again after --for seconds (dcfleet up --netns)",
        description="Take down the root-side end of the veth pair that joins an agent's network namespace to "
        "the bridge, so the agent reaches neither the broker nor other agents, then bring it up again. "
        "Needs a cluster started with `dcfleet up --netns`.")
    cut.add_argument("target", help="agent process name: host-h1, bmc, dpu, migration or power")
    cut.add_argument("--for", dest="duration_s", type=_seconds, default=5.0, metavar="SECONDS",
                     help="how long the link stays down (default: 5)")
    add_cluster_options(cut)
    bmc = kinds.add_parser("bmc", help="make a host's Redfish service respond with 500, respond slowly, or not respond at all")
    bmc.add_argument("host", help="host id, e.g. h1")
    bmc.add_argument("mode", choices=("error", "slow", "hang"),
                     help="error: HTTP 500; slow: respond after --delay; hang: never respond")
    bmc.add_argument("--for", dest="duration_s", type=_seconds, default=10.0, metavar="SECONDS",
                     help="how long the fault lasts (default: 10)")
    bmc.add_argument("--delay", dest="delay_s", type=_seconds, default=2.0, metavar="SECONDS",
                     help="response delay of mode slow, in seconds (default: 2)")
    add_cluster_options(bmc)


def run_fault(args: argparse.Namespace) -> int:
    return asyncio.run(_inject(args))


def add_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import add_cluster_options

    chaos = commands.add_parser("chaos", help="run chaos scenarios",
                                description="Run a chaos scenario on a fresh cluster and check its history.")
    actions = chaos.add_subparsers(dest="chaos_action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run a scenario file, then the history checker",
        description="Start `dcfleet up` as a child process on a fresh state dir, inject the scenario's "
        "faults, stop the cluster, and run the history checker. Exit status 0 when every fault was "
        "injected and the checker found no violation, 1 otherwise.",
    )
    run.add_argument("scenario", type=Path, help="scenario TOML file, e.g. scenarios/smoke.toml")
    run.add_argument("--seed", type=int, default=1, help="seed of the random fault schedule (default: 1)")
    run.add_argument("--state-dir", metavar="DIR", type=Path,
                     help="state dir for the cluster (default: a new temporary directory, kept afterwards)")

    check = commands.add_parser(
        "check", help="check a cluster's stored event history for violated invariants",
        description="Read the whole stored event history (the cluster may be stopped) and report each "
        "violated invariant with the ids and stream sequences of the events involved. Exit status 1 "
        "when there are violations, 0 when there are none.",
    )
    check.add_argument("--events", metavar="FILE", type=Path,
                       help="check a history saved by `dcfleet events --json` instead of the stream")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    add_cluster_options(check)


def run(args: argparse.Namespace) -> int:
    if args.command == "check":
        return _check(args)
    return _chaos_run(args)


def _check(args: argparse.Namespace) -> int:
    from .checker import HistoryError, check_events, print_report, read_jsonl, read_stream

    if args.events is not None:
        records = read_jsonl(args.events)
    else:
        records = asyncio.run(read_stream(args.state_dir, args.nats))
    try:
        report = check_events(records)
    except HistoryError as exc:
        raise ConfigError(str(exc)) from None
    print_report(report, sys.stdout, as_json=args.json)
    return 0 if report.ok else 1


def _chaos_run(args: argparse.Namespace) -> int:
    from .chaos import ScenarioError, load_scenario, run_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        raise ConfigError(str(exc)) from None
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="dcfleet-chaos-"))
    if (state_dir / "cluster.json").exists():
        raise ConfigError(f"{state_dir} already contains a cluster; chaos runs need a fresh state dir")
    try:
        result = asyncio.run(run_scenario(scenario, args.seed, state_dir.resolve()))
    except KeyboardInterrupt:
        print("chaos: interrupted; the cluster was stopped", file=sys.stderr)
        return 130
    return result.exit_status


async def _inject(args: argparse.Namespace) -> int:
    from ._locate import resolve_state_dir
    from .chaos import Cluster, FaultTargetError

    cluster = await Cluster.attach(resolve_state_dir(args.state_dir))
    try:
        if args.fault == "kill":
            fault_id = await cluster.kill(args.target)
        elif args.fault == "restart":
            fault_id = await cluster.restart(args.target)
        elif args.fault == "pause":
            fault_id = await cluster.pause(args.target, args.duration_s)
        elif args.fault == "cut":
            fault_id = await cluster.cut(args.target, args.duration_s)
        else:
            fault_id = await cluster.bmc_fault(args.host, args.mode, args.duration_s, args.delay_s)
    except FaultTargetError as exc:
        print(f"dcfleet: error: {exc}", file=sys.stderr)
        return 2
    finally:
        await cluster.close()
    print(f"fault {fault_id}: {args.fault} injected and cleared")
    return 0
