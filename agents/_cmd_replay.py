"""`dcfleet replay`: run the power policy over a trace directory on a virtual clock."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._config import ConfigError

COMMANDS = ("replay",)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_parser(commands) -> None:
    from .cli import _positive_float, _positive_int
    from .replay import MEMORY_SEMANTICS, POLICIES, PRESETS

    parser = commands.add_parser(
        "replay", help="replay a PlanetLab-format trace through a power policy and report energy and SLA",
        description="Run the power manager's policy over a trace directory (one VM per file, one CPU "
        "percentage per line) on a virtual clock, without the bus, and print energy (kWh), migrations, "
        "SLATAH, PDM and SLAV. Policies: dpm (the cluster power manager: power on/off and relief moves "
        "around the target band), static (the same first packing, then no changes: shows what the dynamic "
        "decisions add), none (every host on, VMs round-robin, no migrations).",
    )
    parser.add_argument("--trace", metavar="DIR", type=Path, required=True, help="directory of trace files")
    parser.add_argument("--hosts", type=_positive_int, default=800, help="number of hosts (default: 800)")
    parser.add_argument("--vms", type=_positive_int, help="use only the first N trace files (default: all)")
    parser.add_argument("--steps", type=_positive_int, help="replay only the first N intervals (default: the longest trace)")
    parser.add_argument("--policy", choices=POLICIES, default="dpm", help="power policy (default: dpm)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="planetlab",
                        help="host and VM models (default: planetlab: ML110 G4/G5 hosts, 4 GB, four VM types, 300 s)")
    parser.add_argument("--memory-semantics", choices=MEMORY_SEMANTICS, default="cpu-only",
                        help="cpu-only: a running VM reserves no host memory, as CloudSim's PlanetLab setup; "
                        "enforced: each VM reserves its RAM (default: cpu-only)")
    parser.add_argument("--report", metavar="OUT", type=Path, help="write summary.json and PNG plots to this directory")
    parser.add_argument("--target", type=_fraction, default=0.63, help="target host utilization (default: 0.63)")
    parser.add_argument("--tolerance", type=_fraction, default=0.18, help="band half-width around the target (default: 0.18)")
    parser.add_argument("--threshold", type=int, choices=range(1, 6), default=3,
                        help="act on recommendations of priority 1..N, 1 conservative, 5 aggressive (default: 3)")
    parser.add_argument("--min-hosts-on", type=_positive_int, default=1, help="hosts always kept on (default: 1)")
    parser.add_argument("--expected-off", type=_positive_float, default=3600.0, metavar="SECONDS",
                        help="expected time a powered-off host stays off, for the power-off cost check (default: 3600)")
    parser.add_argument("--boot-time", type=float, default=120.0, metavar="SECONDS",
                        help="seconds a host boots at peak power after a power-on (default: 120)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from .power._model import PowerSettings
    from .replay import PRESETS, ReplayOptions, run_replay
    from .replay._engine import ReplayError
    from .replay._progress import ProgressBar
    from .replay._report import ReportError, write_report

    try:
        settings = PowerSettings(
            target_utilization=args.target, tolerance=args.tolerance, threshold=args.threshold,
            min_hosts_on=args.min_hosts_on, expected_off_s=args.expected_off, boot_s=args.boot_time,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid policy settings: {exc}") from None
    options = ReplayOptions(
        trace_dir=args.trace, hosts=args.hosts, policy=args.policy, memory_semantics=args.memory_semantics,
        preset=PRESETS[args.preset], settings=settings, vms=args.vms, steps=args.steps,
    )
    progress = None if args.no_progress else ProgressBar(f"replay {args.policy}")
    try:
        result = run_replay(options, progress)
        written = write_report(result, args.report) if args.report else []
    except (ReplayError, ReportError) as exc:
        raise ConfigError(str(exc)) from None
    _print_summary(result.summary)
    for path in written:
        print(f"wrote {path}")
    return 0


def _print_summary(summary: dict) -> None:
    print(
        f"policy {summary['policy']}, memory semantics {summary['memory_semantics']}, "
        f"{summary['hosts']} hosts, {summary['vms']} VMs, {summary['steps']} x {summary['interval_s']:.0f} s"
    )
    print(f"  energy      {summary['energy_kwh']:.2f} kWh")
    print(f"  migrations  {summary['migrations']}")
    print(f"  SLATAH      {summary['slatah']:.2%}")
    print(f"  PDM         {summary['pdm']:.4%}")
    print(f"  SLAV        {summary['slav']:.3e}")
    print(f"  hosts on    mean {summary['hosts_on_mean']}, min {summary['hosts_on_min']}, max {summary['hosts_on_max']}")
    if summary["recommendations"]:
        print(f"  recommendations {json.dumps(summary['recommendations_by_action'])}")
    sys.stdout.flush()
