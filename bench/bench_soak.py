"""Soak run: a chaos scenario repeated with several seeds, then a fault-free baseline.

Prints the faults injected and survived (the checker found no violation in
that run's history), and how much work the cluster got done under faults
against the baseline run of the same workload and length in this process:
completed migrations and power changes per run.

    python bench/bench_soak.py [--scenario scenarios/fifty-faults.toml] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

from agents.chaos import load_scenario, run_scenario
from agents.checker import read_stream

REPO = Path(__file__).resolve().parent.parent


async def one_run(scenario, seed: int) -> tuple[int, int, Counter]:
    state = Path(tempfile.mkdtemp(prefix=f"dcfleet-soak-{seed}-"))
    log = io.StringIO()
    result = await run_scenario(scenario, seed, state, log)
    counts = Counter(e["type"] for e in await read_stream(str(state), None))
    if result.violations:
        sys.stdout.write(log.getvalue())
    return result.faults_injected, result.violations, counts


def work(counts: Counter) -> int:
    return counts["migration.completed"] + counts["host.power_off"] + counts["host.power_on"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "fifty-faults.toml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)

    injected_total = survived = 0
    work_under_faults = []
    for seed in args.seeds:
        injected, violations, counts = await one_run(scenario, seed)
        injected_total += injected
        survived += injected if violations == 0 else 0
        work_under_faults.append(work(counts))
        print(f"seed {seed}: {injected} faults injected, {violations} violations, "
              f"{counts['migration.completed']} migrations completed, {counts['migration.failed']} failed, "
              f"{counts['agent.restarted']} agent restarts, {counts['broker.restarted']} broker restarts", flush=True)

    baseline = replace(scenario, random_count=0, fixed=[])
    _, baseline_violations, baseline_counts = await one_run(baseline, 0)
    baseline_work = work(baseline_counts)
    mean_work = sum(work_under_faults) / len(work_under_faults)
    print(f"baseline (no faults): {baseline_violations} violations, {baseline_work} migrations and power changes")
    print(f"faults survived: {survived} of {injected_total} over {len(args.seeds)} runs")
    ratio = mean_work / baseline_work if baseline_work else float("nan")
    print(f"work under faults / baseline: {mean_work:.1f} / {baseline_work} = {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
