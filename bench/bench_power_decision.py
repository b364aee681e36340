"""Time of one power-manager evaluation for 1,000 hosts and 10,000 VMs.

The cluster is built so that both what-ifs run: some hosts are above the band
(power-on simulation over the standby hosts) and, in a second cluster, some are
below it (power-off simulation, an evacuation per powered-on host). The same-run
baseline computes every host's utilization from the same HostState list.

    /work/venv/bin/python bench/bench_power_decision.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.host._hardware import SPECPOWER_WATTS  # noqa: E402
from agents.power._policy import HostState, PowerSettings, VmLoad, evaluate  # noqa: E402

HOSTS = 1000
VMS = 10_000
ON = 800


def cluster(mean_utilization: float, seed: int) -> list[HostState]:
    rng = random.Random(seed)
    hosts = []
    for h in range(HOSTS):
        model = "ML110G4" if h % 2 == 0 else "ML110G5"
        capacity = 3720.0 if h % 2 == 0 else 5320.0
        vms = ()
        if h < ON:
            per_vm = mean_utilization * capacity / (VMS // ON) * rng.uniform(0.6, 1.4)
            vms = tuple(VmLoad(f"vm{h}-{i}", per_vm * rng.uniform(0.5, 1.5), 0, 870 * 2**20) for i in range(VMS // ON))
        curve = SPECPOWER_WATTS[model]
        hosts.append(HostState(f"h{h}", h < ON, True, capacity, 4096 * 2**20, vms, curve[0], curve))
    return hosts


def timed(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    settings = PowerSettings(threshold=5)
    for label, mean in (("power-on (hosts above the band)", 0.75), ("power-off (hosts below the band)", 0.45)):
        hosts = cluster(mean, seed=1)
        baseline = timed(lambda: [h.utilization for h in hosts])
        decision = timed(lambda: evaluate(hosts, settings))
        recommendation = evaluate(hosts, settings)
        outcome = f"{recommendation.action} {recommendation.host}" if recommendation else "no change"
        print(f"{label}: {HOSTS} hosts, {VMS} VMs: evaluate {decision * 1000:.0f} ms (median of 5), "
              f"utilizations alone {baseline * 1000:.1f} ms, ratio {decision / baseline:.0f}x; "
              f"goal under 1000 ms; result: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
