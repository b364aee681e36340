"""A guest workload that writes pages at a rate that follows the VM's CPU demand."""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

from ._guest import GuestMemory
from ._memory import PAGE_SIZE_BYTES, ZERO_PAGE, MachineCheck

_STAMP = struct.Struct("<QQ")
_STAMPS_PER_PAGE = PAGE_SIZE_BYTES // _STAMP.size


def page_content(guest_page: int, generation: int) -> bytes:
    """Return a non-zero page that differs per page and per write."""
    return _STAMP.pack(guest_page, generation + 1) * _STAMPS_PER_PAGE


@dataclass(frozen=True)
class WorkloadTick:
    pages_written: int
    machine_checks: tuple[MachineCheck, ...]


class GuestWorkload:
    """Writes random pages of a working set; deterministic for a given seed.

    The rate is `max_dirty_rate_pages_per_s` scaled by CPU demand (0..1) and
    by the share of CPU time left after throttling. A write that hits a
    poisoned page gets a machine check, and the guest then retires that
    page, as a guest kernel offlines a page after a memory failure.
    """

    def __init__(
        self,
        memory: GuestMemory,
        *,
        seed: int,
        max_dirty_rate_pages_per_s: float,
        working_set_pages: int | None = None,
        zero_write_fraction: float = 0.1,
    ) -> None:
        if not (isinstance(max_dirty_rate_pages_per_s, (int, float)) and 0 <= max_dirty_rate_pages_per_s < math.inf):
            raise ValueError(f"invalid max_dirty_rate_pages_per_s {max_dirty_rate_pages_per_s!r}: expected >= 0")
        working_set = memory.page_count if working_set_pages is None else working_set_pages
        if type(working_set) is not int or not 0 < working_set <= memory.page_count:
            raise ValueError(f"invalid working_set_pages {working_set_pages!r}: expected 1..{memory.page_count}")
        if not 0 <= zero_write_fraction <= 1:
            raise ValueError(f"invalid zero_write_fraction {zero_write_fraction!r}: expected 0..1")
        self.memory = memory
        self.max_dirty_rate_pages_per_s = max_dirty_rate_pages_per_s
        self.working_set_pages = working_set
        self.zero_write_fraction = zero_write_fraction
        self.retired_pages: set[int] = set()
        self._rng = random.Random(seed)
        self._generation = 0
        self._carry_pages = 0.0

    def dirty_rate_pages_per_s(self, cpu_demand: float, cpu_throttle_pct: int = 0) -> float:
        if not 0 <= cpu_demand <= 1:
            raise ValueError(f"invalid cpu_demand {cpu_demand!r}: expected 0..1")
        if not 0 <= cpu_throttle_pct <= 100:
            raise ValueError(f"invalid cpu_throttle_pct {cpu_throttle_pct!r}: expected 0..100")
        return self.max_dirty_rate_pages_per_s * cpu_demand * (100 - cpu_throttle_pct) / 100

    def run(self, elapsed_s: float, cpu_demand: float, cpu_throttle_pct: int = 0) -> WorkloadTick:
        """Write the pages due in `elapsed_s` seconds of guest time."""
        if not (isinstance(elapsed_s, (int, float)) and 0 <= elapsed_s < math.inf):
            raise ValueError(f"invalid elapsed_s {elapsed_s!r}: expected a non-negative number")
        due = self.dirty_rate_pages_per_s(cpu_demand, cpu_throttle_pct) * elapsed_s + self._carry_pages
        count = int(due)
        self._carry_pages = due - count
        return self.write_pages(count)

    def write_pages(self, count: int) -> WorkloadTick:
        """Write `count` pages chosen at random from the working set."""
        machine_checks: list[MachineCheck] = []
        written = 0
        for _ in range(count):
            page = self._rng.randrange(self.working_set_pages)
            if page in self.retired_pages:
                continue
            self._generation += 1
            if self._rng.random() < self.zero_write_fraction:
                data = ZERO_PAGE
            else:
                data = page_content(page, self._generation)
            try:
                self.memory.write(page, data)
            except MachineCheck as check:
                machine_checks.append(check)
                self.retired_pages.add(page)
                continue
            written += 1
        return WorkloadTick(written, tuple(machine_checks))


def populate(memory: GuestMemory, *, seed: int, nonzero_fraction: float) -> int:
    """Fill a share of the VM's pages with data, as a booted guest would; return the count written.

    Pages with a known error are skipped, because the hypervisor unmaps them from the guest.
    """
    if not 0 <= nonzero_fraction <= 1:
        raise ValueError(f"invalid nonzero_fraction {nonzero_fraction!r}: expected 0..1")
    rng = random.Random(seed)
    written = 0
    for page in range(memory.page_count):
        if rng.random() >= nonzero_fraction:
            continue
        frame = memory.page_map.host_frame(page)
        if memory.host.is_poisoned(frame):
            continue
        memory.write(page, page_content(page, 0))
        written += 1
    return written
