"""A VM on a host: its CPU demand from a trace and its memory as real bytes."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

PAGE_SIZE = 4096


@dataclass
class Vm:
    id: str
    trace: list[int]
    mips: float
    memory: bytearray
    seed: int
    dirty_pages: set[int] = field(default_factory=set)
    paused: bool = False

    @classmethod
    def create(cls, vm_id: str, trace: list[int], mips: float, memory_bytes: int, seed: int) -> "Vm":
        """A VM whose memory starts as seeded random bytes, so copies can be compared."""
        if memory_bytes <= 0 or memory_bytes % PAGE_SIZE:
            raise ValueError(f"memory_bytes {memory_bytes} is not a positive multiple of {PAGE_SIZE}")
        memory = bytearray(random.Random(seed).randbytes(memory_bytes))
        return cls(vm_id, list(trace), mips, memory, seed)

    @property
    def memory_bytes(self) -> int:
        return len(self.memory)

    @property
    def page_count(self) -> int:
        return len(self.memory) // PAGE_SIZE

    def utilization(self, step: int) -> float:
        """CPU utilization (0..1) at a trace step; the trace repeats after its end."""
        return self.trace[step % len(self.trace)] / 100.0

    def demand_mips(self, step: int) -> float:
        return self.utilization(step) * self.mips

    def run_for(self, step: int, elapsed_s: float, rng: random.Random, pages_per_busy_second: int = 64) -> int:
        """Dirty pages in proportion to CPU demand; return how many were written."""
        if self.paused:
            return 0
        count = int(self.utilization(step) * pages_per_busy_second * elapsed_s)
        for _ in range(count):
            page = rng.randrange(self.page_count)
            offset = page * PAGE_SIZE + rng.randrange(PAGE_SIZE - 8)
            self.memory[offset : offset + 8] = rng.randbytes(8)
            self.dirty_pages.add(page)
        return count

    def take_dirty(self) -> list[int]:
        pages = sorted(self.dirty_pages)
        self.dirty_pages.clear()
        return pages

    def digest(self) -> str:
        return hashlib.sha256(self.memory).hexdigest()


def page_runs(pages: list[int], max_pages: int) -> list[tuple[int, int]]:
    """Group sorted page numbers into (first page, count) runs of at most max_pages."""
    runs: list[tuple[int, int]] = []
    for page in pages:
        if runs and runs[-1][0] + runs[-1][1] == page and runs[-1][1] < max_pages:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page, 1))
    return runs
