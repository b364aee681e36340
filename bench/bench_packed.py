"""Boot a 1,000-host packed cluster and print its figures.

Runs `dcfleet up --hosts N --hosts-per-process K --vms 0` and, from outside,
measures: seconds from the start of `dcfleet up` until every host has
published `host.booted`; heartbeat latency (receive time minus the envelope's
send time) p50/p99 over the steady window; resident memory of the packed host
processes per host; and the broker's CPU use over the steady window. The
baseline row is the migration coordinator of the same run: one agent in one
process with one connection, what a host costs without packing.

    python bench/bench_packed.py [--hosts 1000] [--hosts-per-process 100] [--steady 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

import proto
from proto import subjects

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def broker_pid(state_dir: Path) -> int:
    pids = [p for p in pids_mentioning("nats-server") if str(state_dir) in Path(f"/proc/{p}/cmdline").read_text()]
    if not pids:
        raise SystemExit("bench: broker process not found")
    return pids[0]


async def wait_for_config(state_dir: Path, up: subprocess.Popen, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    path = state_dir / "cluster.json"
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise SystemExit(f"bench: dcfleet up exited with status {up.returncode}")
        if path.exists():
            config = json.loads(path.read_text())
            if config.get("running"):
                return config
        await asyncio.sleep(0.2)
    raise SystemExit("bench: the cluster did not start in time")


async def measure(args: argparse.Namespace, state_dir: Path, up: subprocess.Popen, started: float) -> dict:
    config = await wait_for_config(state_dir, up, 600)
    nc = await nats.connect(config["nats_url"], connect_timeout=10)
    booted: set[str] = set()
    latencies_s: list[float] = []
    steady = asyncio.Event()

    async def on_event(msg) -> None:
        envelope = proto.decode(msg.data)
        if envelope.type == "host.booted":
            booted.add(envelope.data["host"])
        elif envelope.type == "host.heartbeat" and steady.is_set():
            latencies_s.append(time.time() - envelope.time)

    await nc.subscribe(subjects.EVENTS_ALL, cb=on_event)
    last_report = 0.0
    while len(booted) < args.hosts:
        if up.poll() is not None:
            raise SystemExit(f"bench: dcfleet up exited with status {up.returncode}")
        if time.monotonic() - last_report > 5:
            print(f"bench: {len(booted)}/{args.hosts} hosts booted", file=sys.stderr, flush=True)
            last_report = time.monotonic()
        await asyncio.sleep(0.1)
    boot_s = time.monotonic() - started
    broker = broker_pid(state_dir)
    cpu_before, window_start = cpu_seconds(broker), time.monotonic()
    steady.set()
    await asyncio.sleep(args.steady)
    broker_cpu = (cpu_seconds(broker) - cpu_before) / (time.monotonic() - window_start)
    packed = pids_mentioning("host-pack --hosts")
    packed = [p for p in packed if str(state_dir) in Path(f"/proc/{p}/cmdline").read_text()]
    packed_rss = sum(rss_bytes(p) for p in packed)
    single = [p for p in pids_mentioning("agent migration --id") if str(state_dir) in Path(f"/proc/{p}/cmdline").read_text()]
    await nc.drain()
    latencies_s.sort()
    return {
        "hosts": args.hosts, "processes": len(packed), "boot_s": boot_s,
        "heartbeats": len(latencies_s),
        "p50_ms": 1000 * statistics.median(latencies_s) if latencies_s else float("nan"),
        "p99_ms": 1000 * latencies_s[int(0.99 * (len(latencies_s) - 1))] if latencies_s else float("nan"),
        "rss_per_host_mib": packed_rss / args.hosts / 2**20,
        "single_agent_rss": rss_bytes(single[0]) if single else 0,
        "broker_cpu_percent": 100 * broker_cpu,
        "heartbeat_interval_s": config["heartbeat_interval_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--hosts-per-process", type=int, default=100)
    parser.add_argument("--steady", type=float, default=30.0, help="seconds of heartbeats to measure after boot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-packed-") as tmp:
        state_dir = Path(tmp) / "state"
        started = time.monotonic()
        up = subprocess.Popen(
            [sys.executable, "-m", "agents", "up", "--state-dir", str(state_dir), "--hosts", str(args.hosts),
             "--hosts-per-process", str(args.hosts_per_process), "--vms", "0"],
            stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "up.err", "wb"),
        )
        try:
            figures = asyncio.run(measure(args, state_dir, up, started))
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(120)
    print(f"hosts {figures['hosts']} in {figures['processes']} processes, "
          f"heartbeat interval {figures['heartbeat_interval_s']:g} s")
    print(f"time until all hosts booted   {figures['boot_s']:8.1f} s (from the start of dcfleet up)")
    print(f"heartbeat latency p50 / p99   {figures['p50_ms']:8.1f} / {figures['p99_ms']:.1f} ms "
          f"({figures['heartbeats']} heartbeats)")
    print(f"memory per host (packed)      {figures['rss_per_host_mib']:8.2f} MiB RSS")
    print(f"memory of a one-agent process {figures['single_agent_rss'] / 2**20:8.2f} MiB RSS (baseline, same run)")
    print(f"ratio packed / baseline       {figures['rss_per_host_mib'] * 2**20 / figures['single_agent_rss']:8.3f}")
    print(f"broker CPU                    {figures['broker_cpu_percent']:8.1f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
