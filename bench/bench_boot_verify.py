"""Benchmark: verify a boot bank of 200 modules (256 MiB) against plain SHA-256 of the same bytes.

Run as `python bench/bench_boot_verify.py`. Both measurements read the bank's files from the
page cache (one warm-up pass each), and each is the best of several rounds in this one run.
The ratio is baseline time / verify time, so 1.0 means verification costs no more than
hashing; the goal is at least 0.9. verify_bank runs by default with 2 hashing threads and the
baseline with one, so the script also prints verify_bank with a single hashing thread.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import agents.secureboot as sb  # noqa: E402

CHUNK_BYTES = 1024 * 1024


def write_sources(src: Path, module_count: int, total_bytes: int) -> None:
    (src / "modules").mkdir(parents=True)
    for name in ("loader", "kernel", "verifier"):
        (src / name).write_bytes(os.urandom(64 * 1024))
    module_bytes = total_bytes // module_count
    block = os.urandom(module_bytes)
    for index in range(module_count):
        # Each module differs in its first bytes so no two images share a digest.
        (src / "modules" / f"module-{index:03d}").write_bytes(index.to_bytes(4, "little") + block[4:])


def hash_files(paths: list[Path]) -> int:
    """Baseline: stream every file through hashlib.sha256, as the verifier must at least do."""
    total = 0
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as stream:
            while count := stream.readinto(buffer):
                digest.update(view[:count])
                total += count
    return total


def best_of(rounds: int, action) -> float:
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=200, help="number of modules in the bank")
    parser.add_argument("--total-mib", type=int, default=256, help="total size of the modules in MiB")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement; the best is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-boot-verify-") as work:
        root = Path(work)
        keys = sb.init_keys(root / "keys")
        sb.provision_host_state(root / "state", keys, "bench-host")
        write_sources(root / "src", args.modules, args.total_mib * 1024 * 1024)
        sb.build_image(root / "src", root / "bank", keys)
        files = sorted(p for p in (root / "bank").rglob("*") if p.is_file())
        total_bytes = hash_files(files)
        report = sb.verify_bank(root / "bank", root / "state")

        baseline_s = best_of(args.rounds, lambda: hash_files(files))
        verify_s = best_of(args.rounds, lambda: sb.verify_bank(root / "bank", root / "state", hash_workers=2))
        single_s = best_of(args.rounds, lambda: sb.verify_bank(root / "bank", root / "state", hash_workers=1))

    mib = total_bytes / (1024 * 1024)
    print(f"bank: {len(report.module_paths)} modules, {len(files)} files, {mib:.1f} MiB")
    print(f"hashlib.sha256 baseline: {baseline_s:.3f} s ({mib / baseline_s:.0f} MiB/s)")
    print(f"verify_bank, 2 hash threads: {verify_s:.3f} s ({mib / verify_s:.0f} MiB/s)")
    print(f"verify_bank, 1 hash thread:  {single_s:.3f} s ({mib / single_s:.0f} MiB/s)")
    print(f"ratio (baseline / verify, default 2 threads): {baseline_s / verify_s:.3f} (goal >= 0.9)")
    print(f"ratio (baseline / verify, 1 thread):          {baseline_s / single_s:.3f}")
    print(f"machine: {os.cpu_count()} CPUs; the baseline hashes on one thread")


if __name__ == "__main__":
    main()
