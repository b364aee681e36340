"""`dcfleet chaos run`, `dcfleet check`, and the process, broker, network and BMC kinds of `dcfleet inject`.

`dcfleet inject` itself is registered in _cmd_boot.py, which adds these kinds with
add_fault_parsers() and hands them to run_fault().
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._config import ConfigError
from ._durations import MAX_DELAY_S, MAX_FAULT_S, check_seconds

COMMANDS = ("chaos", "check")
FAULT_KINDS = ("kill", "restart", "pause", "cut", "bmc")


def _seconds(text: str, maximum: float = MAX_FAULT_S) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    try:
        return check_seconds(value, "the value", maximum)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _delay_seconds(text: str) -> float:
    return _seconds(text, MAX_DELAY_S)


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
                       help=f"how long the process stays stopped, at most {MAX_FAULT_S:g} (default: 3)")
    add_cluster_options(pause)
    cut = kinds.add_parser(
        "cut", help="take an agent's network link down, then up again after --for seconds (dcfleet up --netns)",
        description="Take down the root-side end of the veth pair that joins an agent's network namespace to "
        "the bridge, so the agent reaches neither the broker nor other agents, then bring it up again. "
        "Needs a cluster started with `dcfleet up --netns`.")
    cut.add_argument("target", help="agent process name: host-h1, bmc, dpu, migration or power")
    cut.add_argument("--for", dest="duration_s", type=_seconds, default=5.0, metavar="SECONDS",
                     help=f"how long the link stays down, at most {MAX_FAULT_S:g} (default: 5)")
    add_cluster_options(cut)
    bmc = kinds.add_parser("bmc", help="make a host's Redfish service respond with 500, respond slowly, or not respond at all")
    bmc.add_argument("host", help="host id, e.g. h1")
    bmc.add_argument("mode", choices=("error", "slow", "hang"),
                     help="error: HTTP 500; slow: respond after --delay; hang: never respond")
    bmc.add_argument("--for", dest="duration_s", type=_seconds, default=10.0, metavar="SECONDS",
                     help=f"how long the fault lasts, at most {MAX_FAULT_S:g} (default: 10)")
    bmc.add_argument("--delay", dest="delay_s", type=_delay_seconds, default=2.0, metavar="SECONDS",
                     help=f"response delay of mode slow, in seconds, at most {MAX_DELAY_S:g} (default: 2)")
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
    """Inject one fault; SIGINT or SIGTERM cancels it, which undoes a timed fault and stores fault.cleared."""
    from ._locate import resolve_state_dir
    from .chaos import Cluster, FaultTargetError

    cluster = await Cluster.attach(resolve_state_dir(args.state_dir))
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        # The first signal cancels the fault; more signals must not cut its cleanup short.
        if not received:
            received.append(signum)
            main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        fault_id = await _carry_out(cluster, args)
    except FaultTargetError as exc:
        print(f"dcfleet: error: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        if not received:
            raise
        main.uncancel()
        if args.fault in ("kill", "restart"):
            done = "`dcfleet up` restarts the process; no fault.cleared was stored"
        else:
            done = "it was undone and stored as fault.cleared"
        print(f"dcfleet: {received[0].name} received: {args.fault} interrupted; {done}", file=sys.stderr)
        return 128 + received[0]
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await cluster.close()
    print(f"fault {fault_id}: {args.fault} injected and cleared")
    return 0


async def _carry_out(cluster: Any, args: argparse.Namespace) -> str:
    if args.fault == "kill":
        return await cluster.kill(args.target)
    if args.fault == "restart":
        return await cluster.restart(args.target)
    if args.fault == "pause":
        return await cluster.pause(args.target, args.duration_s)
    if args.fault == "cut":
        return await cluster.cut(args.target, args.duration_s)
    return await cluster.bmc_fault(args.host, args.mode, args.duration_s, args.delay_s)
