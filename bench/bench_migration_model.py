"""Precopy state machine in simulated time beside the geometric precopy model.

For each (memory size, dirty rate, bandwidth) point, PrecopySource is driven
by a loop in which each pass takes its wire bytes / bandwidth seconds and the
guest writes dirty-rate / page-size random pages per second meanwhile. The
geometric model assumes every write hits a page not yet dirty in the pass,
so measured rounds shrink faster where writes collide on the same pages.

    /work/venv/bin/python bench/bench_migration_model.py
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.migration_core import (
    DATA_RECORD_SIZE_BYTES,
    DEFAULT_RECORDS_PER_BATCH,
    PAGE_SIZE_BYTES,
    PassReport,
    PrecopyConfig,
    PrecopySource,
    SendPass,
    predict_precopy,
)

BATCH_HEADER_SIZE_BYTES = 10
MIB = 1 << 20
GIB = 1 << 30

# (memory bytes, dirty rate bytes/s, bandwidth bytes/s, auto-converge)
POINTS = [
    (256 * MIB, 20e6, 125e6, False),
    (1 * GIB, 0.0, 1.25e9, False),
    (1 * GIB, 100e6, 1.25e9, False),
    (1 * GIB, 500e6, 1.25e9, False),
    (1 * GIB, 50e6, 125e6, False),
    (1 * GIB, 100e6, 125e6, False),
    (1 * GIB, 200e6, 125e6, False),
    (1 * GIB, 200e6, 125e6, True),
    (4 * GIB, 200e6, 1.25e9, False),
    (4 * GIB, 1e9, 1.25e9, True),
]


def wire_bytes(page_count: int) -> int:
    batches = math.ceil(page_count / DEFAULT_RECORDS_PER_BATCH)
    return page_count * DATA_RECORD_SIZE_BYTES + batches * BATCH_HEADER_SIZE_BYTES


def run_point(memory_bytes, dirty_rate_bytes_per_s, bandwidth_bytes_per_s, auto_converge, config_args, seed):
    page_count = memory_bytes // PAGE_SIZE_BYTES
    config = PrecopyConfig(auto_converge=auto_converge, **config_args)
    engine = PrecopySource(page_count, config)
    rng = np.random.default_rng(seed)
    write_rate_pages_per_s = dirty_rate_bytes_per_s / PAGE_SIZE_BYTES
    carry = 0.0
    step = engine.start()
    while isinstance(step, SendPass):
        sent = wire_bytes(len(step.guest_pages))
        elapsed_s = sent / bandwidth_bytes_per_s
        due = write_rate_pages_per_s * (100 - step.cpu_throttle_pct) / 100 * elapsed_s + carry
        writes = int(due)
        carry = due - writes
        dirty = np.unique(rng.integers(0, page_count, writes)).tolist()
        report = PassReport(sent, elapsed_s, normal_pages=len(step.guest_pages))
        step = engine.pass_done(report, dirty)
    sent = wire_bytes(len(step.guest_pages))
    done = engine.stop_copy_done(PassReport(sent, sent / bandwidth_bytes_per_s, normal_pages=len(step.guest_pages)))
    return done.stats, step.reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--downtime-limit-ms", type=float, default=300.0, help="downtime limit in milliseconds")
    parser.add_argument("--max-iterations", type=int, default=30, help="passes after the first full pass")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated guest's writes")
    args = parser.parse_args()
    config_args = {"downtime_limit_s": args.downtime_limit_ms / 1000, "max_iterations": args.max_iterations}

    print(f"downtime limit {args.downtime_limit_ms:.0f} ms, iteration cap {args.max_iterations}")
    header = (f"{'memory':>8} {'dirty MB/s':>10} {'bw MB/s':>8} {'auto':>5} | "
              f"{'model: it':>9} {'total s':>8} {'down ms':>9} {'stop':>13} | "
              f"{'measured: it':>12} {'total s':>8} {'down ms':>9} {'stop':>13} {'throttle%':>9}")
    print(header)
    print("-" * len(header))
    for memory_bytes, dirty_rate, bandwidth, auto_converge in POINTS:
        model = predict_precopy(memory_bytes, dirty_rate, bandwidth, **config_args)
        stats, reason = run_point(memory_bytes, dirty_rate, bandwidth, auto_converge, config_args, args.seed)
        memory_label = f"{memory_bytes // MIB} MiB" if memory_bytes < GIB else f"{memory_bytes // GIB} GiB"
        print(f"{memory_label:>8} {dirty_rate / 1e6:>10.0f} {bandwidth / 1e6:>8.0f} {'on' if auto_converge else 'off':>5} | "
              f"{model.iterations:>9} {model.total_time_s:>8.2f} {model.downtime_s * 1000:>9.1f} {model.reason:>13} | "
              f"{stats.iterations:>12} {stats.total_time_s:>8.2f} {stats.downtime_s * 1000:>9.1f} {reason:>13} "
              f"{stats.cpu_throttle_pct:>9}")
    print("The model has no throttling, so auto-converge rows compare against plain precopy.")


if __name__ == "__main__":
    main()
