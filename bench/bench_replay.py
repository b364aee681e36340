"""Replay wall time and peak memory for the 800-host PlanetLab day 20110303.

Each policy runs in its own Python process, which reports its wall time and its
peak resident set size (ru_maxrss). The `none` policy (every host on, no
decisions) is the same-run baseline: loading and stepping the trace alone.

CloudSim 3.0.3 takes about 68 s and 2 GB for this day with its stock example
(logging on). Those figures are CloudSim's, measured elsewhere on this kind of
machine: this script does not run CloudSim.

    /work/venv/bin/python bench/bench_replay.py [--trace DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO / ".." / "shared" / "traces" / "planetlab" / "20110303"
CLOUDSIM_SECONDS = 68.0
CLOUDSIM_MB = 2048.0
GOAL_MB = 500.0

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from agents.replay import ReplayOptions, run_replay
started = time.perf_counter()
result = run_replay(ReplayOptions(Path({trace!r}), hosts=800, policy={policy!r}, memory_semantics={semantics!r}))
wall = time.perf_counter() - started
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(wall_s=wall, peak_mb=peak_mb, summary=result.summary)))
"""


def run(trace: Path, policy: str, semantics: str) -> dict:
    code = CHILD.format(repo=str(REPO), trace=str(trace), policy=policy, semantics=semantics)
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    args = parser.parse_args()
    if not args.trace.is_dir():
        print(f"trace directory {args.trace} not found", file=sys.stderr)
        return 2
    print(f"trace {args.trace.resolve()}, 800 hosts, PlanetLab preset")
    print(f"{'policy':<8} {'memory':<9} {'wall s':>7} {'peak MB':>8} {'energy kWh':>11} {'migrations':>10} "
          f"{'SLATAH':>7} {'PDM':>8}")
    results = {}
    for policy, semantics in (("none", "cpu-only"), ("dpm", "cpu-only"), ("dpm", "enforced")):
        r = run(args.trace, policy, semantics)
        results[(policy, semantics)] = r
        s = r["summary"]
        print(f"{policy:<8} {semantics:<9} {r['wall_s']:7.2f} {r['peak_mb']:8.0f} {s['energy_kwh']:11.2f} "
              f"{s['migrations']:10d} {s['slatah']:7.2%} {s['pdm']:8.4%}")
    dpm = results[("dpm", "cpu-only")]
    baseline = results[("none", "cpu-only")]
    print(f"dpm cpu-only against CloudSim 3.0.3's 68 s (CloudSim's figure, not measured in this run): "
          f"{CLOUDSIM_SECONDS / dpm['wall_s']:.1f}x faster; goal 10x")
    print(f"dpm cpu-only peak memory {dpm['peak_mb']:.0f} MB against CloudSim's about {CLOUDSIM_MB:.0f} MB; "
          f"goal under {GOAL_MB:.0f} MB")
    print(f"dpm cpu-only against the same-run `none` baseline: {dpm['wall_s'] / baseline['wall_s']:.1f}x its wall time "
          f"(the policy's share of the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
