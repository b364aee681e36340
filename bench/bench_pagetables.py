"""Benchmark: build and verify page tables for a 1 TiB host and a 4 GiB range of 4 KiB pages.

Run as ``python bench/bench_pagetables.py``. Verification dumps the tables and compares the
merged ranges with the request, then walks a sample of addresses. The baseline is the same
1 TiB host mapped with 2 MiB blocks only (output shifted by 2 MiB), measured in the same run.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.pagetables import (  # noqa: E402
    DATA_RIGHTS,
    Access,
    Architecture,
    PhysicalMemory,
    TableAllocator,
    TableBuilder,
    Translation,
    dump_mappings,
    table_format,
    translate,
)

GIB = 1 << 30
TIB = 1 << 40
PAGE = 4096
WALK_SAMPLES = 20_000


def build(architecture, size_bytes, *, use_blocks, output_offset):
    fmt = table_format(architecture)
    memory = PhysicalMemory(2 * TIB)
    allocator = TableAllocator(memory, "tables", TIB + GIB, GIB)
    started = time.perf_counter()
    builder = TableBuilder(memory, fmt, allocator)
    builder.map_range(0, output_offset, size_bytes, DATA_RIGHTS, region_name="ram",
                      use_blocks=use_blocks)
    build_s = time.perf_counter() - started
    return memory, fmt, builder, allocator, build_s


def verify(memory, fmt, root, size_bytes, output_offset):
    started = time.perf_counter()
    ranges = dump_mappings(memory, fmt, root)
    assert len(ranges) == 1, f"expected one merged range, found {len(ranges)}"
    assert (ranges[0].start, ranges[0].end) == (0, size_bytes)
    assert ranges[0].output_start == output_offset
    rng = random.Random(1)
    for _ in range(WALK_SAMPLES):
        address = rng.randrange(0, size_bytes)
        result = translate(memory, fmt, root, address, Access.WRITE)
        assert isinstance(result, Translation) and result.output_address == address + output_offset
    return time.perf_counter() - started


def run_case(label, architecture, size_bytes, *, use_blocks=True, output_offset=0):
    memory, fmt, builder, allocator, build_s = build(
        architecture, size_bytes, use_blocks=use_blocks, output_offset=output_offset
    )
    verify_s = verify(memory, fmt, builder.root_address, size_bytes, output_offset)
    print(
        f"{label:<38} {architecture.value:<8} build {build_s * 1000:9.1f} ms  "
        f"verify {verify_s * 1000:9.1f} ms  tables {allocator.pages_used:6d} pages "
        f"({allocator.bytes_used / 1024:9.0f} KiB)"
    )
    return build_s + verify_s


def main() -> None:
    print(f"verification = dump and merge every entry + {WALK_SAMPLES} sampled walks")
    for architecture in Architecture:
        blocks_s = run_case("1 TiB RAM, 1 GiB blocks", architecture, TIB)
        # An output 2 MiB off a 1 GiB boundary leaves 2 MiB blocks as the largest entries.
        baseline_s = run_case("1 TiB RAM, 2 MiB blocks (baseline)", architecture, TIB,
                              output_offset=2 * 1024 * 1024)
        run_case("4 GiB, 4 KiB pages only", architecture, 4 * GIB, use_blocks=False)
        print(f"  1 GiB blocks vs 2 MiB baseline: {baseline_s / blocks_s:.1f}x faster")


if __name__ == "__main__":
    main()
