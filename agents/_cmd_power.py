"""`dcfleet host-power probe` (this machine's idle states and energy counters) and
`dcfleet status` (hosts and their packages, from the cluster's heartbeats)."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = ("host-power", "status")

CPU_ROOT = Path("/sys/devices/system/cpu")
POWERCAP_ROOT = Path("/sys/class/powercap")


def add_parser(commands) -> None:
    from .cli import _positive_float, add_cluster_options

    host_power = commands.add_parser(
        "host-power", help="inspect this machine's processor idle states and energy counters",
        description="Read the real CPU idle-state residency and RAPL energy counters of the machine "
        "dcfleet runs on.",
    )
    actions = host_power.add_subparsers(dest="host_power_action", metavar="ACTION", required=True)
    probe = actions.add_parser(
        "probe", help="read /sys/devices/system/cpu/*/cpuidle and /sys/class/powercap",
        description="Sample the per-CPU idle states (cpuidle) and RAPL energy counters (powercap) twice, "
        "--interval seconds apart, and print the share of time in each idle state and the average power. "
        "Says plainly which of them this machine does not expose (VMs and containers often expose neither).",
    )
    probe.add_argument("--interval", type=_positive_float, default=1.0, metavar="SECONDS",
                       help="seconds between the two samples (default: 1)")
    probe.add_argument("--sysfs-cpu", type=Path, default=CPU_ROOT, help=argparse.SUPPRESS)
    probe.add_argument("--sysfs-powercap", type=Path, default=POWERCAP_ROOT, help=argparse.SUPPRESS)

    status = commands.add_parser(
        "status", help="print each host's power, load and per-package idle residency",
        description="Listen to the running cluster's heartbeats and print one line per host and one per "
        "processor package: utilization, deep and shallow package idle residency, watts.",
    )
    status.add_argument("--wait", type=_positive_float, default=5.0, metavar="SECONDS",
                        help="seconds to wait for a heartbeat from every host (default: 5)")
    add_cluster_options(status)


def run(args: argparse.Namespace) -> int:
    if args.command == "host-power":
        return probe(args.sysfs_cpu, args.sysfs_powercap, args.interval)
    try:
        return asyncio.run(status(args.state_dir, args.nats, args.wait))
    except KeyboardInterrupt:
        return 130


# ---- probe -----------------------------------------------------------------------


@dataclass
class Sample:
    # (cpu, state name) -> microseconds spent in it; RAPL zone name -> (energy uJ, wrap range uJ).
    idle_us: dict[tuple[str, str], int] = field(default_factory=dict)
    energy_uj: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def _read_int(path: Path, sample: Sample) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        sample.unreadable.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
        return None


def take_sample(cpu_root: Path, powercap_root: Path) -> Sample:
    sample = Sample()
    for state in sorted(cpu_root.glob("cpu[0-9]*/cpuidle/state[0-9]*")):
        try:
            name = (state / "name").read_text().strip()
        except OSError:
            continue
        value = _read_int(state / "time", sample)
        if value is not None:
            sample.idle_us[(state.parent.parent.name, name)] = value
    for zone in sorted(powercap_root.glob("*")):
        if not (zone / "energy_uj").exists():
            continue
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            name = zone.name
        energy = _read_int(zone / "energy_uj", sample)
        wrap = _read_int(zone / "max_energy_range_uj", sample) if (zone / "max_energy_range_uj").exists() else 0
        if energy is not None:
            sample.energy_uj[f"{zone.name} ({name})"] = (energy, wrap or 0)
    return sample


def probe(cpu_root: Path, powercap_root: Path, interval_s: float) -> int:
    first = take_sample(cpu_root, powercap_root)
    started = time.monotonic()
    time.sleep(interval_s)
    second = take_sample(cpu_root, powercap_root)
    elapsed_us = (time.monotonic() - started) * 1e6
    _print_idle(first, second, cpu_root, elapsed_us)
    _print_energy(first, second, powercap_root, elapsed_us)
    for problem in sorted(set(second.unreadable)):
        print(f"  could not read {problem}")
    return 0


def _print_idle(first: Sample, second: Sample, cpu_root: Path, elapsed_us: float) -> None:
    if not second.idle_us:
        print(f"cpuidle: not available: no {cpu_root}/cpu*/cpuidle/state*/time on this machine "
              "(no cpuidle driver, or a VM or container that hides it)")
        return
    print(f"cpuidle: share of the {elapsed_us / 1e6:.2f} s interval in each idle state, per CPU")
    cpus = sorted({cpu for cpu, _ in second.idle_us}, key=lambda c: int(c[3:]))
    for cpu in cpus:
        shares = [
            f"{name} {(value - first.idle_us.get((c, name), value)) / elapsed_us:6.1%}"
            for (c, name), value in second.idle_us.items() if c == cpu
        ]
        print(f"  {cpu:<6} " + "  ".join(shares))
    print("  package idle states (PC2/PC6...) are not in cpuidle; turbostat's Pkg%pc columns read them from MSRs")


def _print_energy(first: Sample, second: Sample, powercap_root: Path, elapsed_us: float) -> None:
    if not second.energy_uj:
        print(f"powercap: not available: no {powercap_root}/*/energy_uj on this machine "
              "(no RAPL driver, not an Intel/AMD package that has it, or it is hidden)")
        return
    print("powercap: average power over the interval")
    for zone, (energy, wrap) in second.energy_uj.items():
        before = first.energy_uj.get(zone, (energy, wrap))[0]
        delta = energy - before
        if delta < 0 and wrap:
            delta += wrap
        print(f"  {zone:<32} {delta / elapsed_us:8.2f} W  (counter {energy} uJ)")


# ---- status ----------------------------------------------------------------------


async def status(state_dir: str | None, nats_url: str | None, wait_s: float) -> int:
    import proto
    from proto import subjects

    from ._client import cluster_client

    heartbeats: dict[str, proto.HostHeartbeat] = {}
    async with cluster_client(state_dir, nats_url, source="cli.status") as client:
        expected = {h.id for h in client.config.hosts} if client.config else set()

        async def on_heartbeat(msg) -> None:
            try:
                heartbeat = proto.parse_event(msg.subject, msg.data, proto.HostHeartbeat)
            except proto.MessageRejected:
                return
            heartbeats[heartbeat.host] = heartbeat

        subscription = await client.nc.subscribe(subjects.event(proto.HostHeartbeat.TYPE), cb=on_heartbeat)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and (not heartbeats or not expected <= set(heartbeats)):
            await asyncio.sleep(0.1)
        await subscription.unsubscribe()
    if not heartbeats:
        print(f"no heartbeat within {wait_s:.0f} s; is the cluster running? (`dcfleet up`)")
        return 1
    for line in status_lines(heartbeats, expected):
        print(line)
    return 0


def status_lines(heartbeats: dict, expected: set[str]) -> list[str]:
    lines = []
    for host_id in sorted(set(heartbeats) | expected, key=lambda h: (len(h), h)):
        heartbeat = heartbeats.get(host_id)
        if heartbeat is None:
            lines.append(f"{host_id:<6} no heartbeat")
            continue
        lines.append(
            f"{host_id:<6} {heartbeat.power_state:<4} {'booted' if heartbeat.booted else 'not booted':<10} "
            f"util {heartbeat.utilization:6.1%}  VMs {len(heartbeat.vms):<3} {heartbeat.power_watts:7.1f} W"
        )
        for package in heartbeat.packages:
            if not isinstance(package, dict):
                continue
            lines.append(
                f"  package {package.get('package', '?')}: {package.get('cores', '?')} cores, "
                f"{len(package.get('vms', []))} VMs, util {float(package.get('utilization', 0)):6.1%}, "
                f"deep idle {float(package.get('deep_idle_residency', 0)):6.1%}, "
                f"shallow idle {float(package.get('shallow_idle_residency', 0)):6.1%}, "
                f"{float(package.get('watts', 0)):6.1f} W"
            )
    return lines
