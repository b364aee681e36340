"""A host's RAM as migration_core frames with an error map, and its VMs' guest memory.

No bus code here: the host agent feeds these classes and publishes what they report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from ..migration_core import (
    NO_CHECKSUM,
    PAGE_SIZE_BYTES,
    ZERO_PAGE_CHECKSUM,
    AllocatedPageMap,
    ArenaFrameStore,
    GuestMemory,
    GuestPageMap,
    GuestWorkload,
    HostMemory,
    digest_checksums,
    page_checksum,
    populate,
)

# Share of guest pages a booted guest has written; the rest are zero pages, never stored.
NONZERO_FRACTION = 0.75
DEFAULT_MAX_DIRTY_RATE_PAGES_PER_S = 2000.0
_ZERO_PAGE = bytes(PAGE_SIZE_BYTES)


class GuestVm:
    """A VM on a host: CPU demand from its trace, memory as guest pages on host frames."""

    def __init__(self, vm_id: str, trace: list[int], mips: float, seed: int, guest: GuestMemory,
                 max_dirty_rate_pages_per_s: float) -> None:
        self.id = vm_id
        self.trace = list(trace)
        self.mips = mips
        self.seed = seed
        self.guest = guest
        self.max_dirty_rate_pages_per_s = max_dirty_rate_pages_per_s
        self.workload = GuestWorkload(guest, seed=seed, max_dirty_rate_pages_per_s=max_dirty_rate_pages_per_s)
        # A paused guest runs no workload: set from stop-and-copy until the migration ends.
        self.paused = False
        # Auto-converge's share of CPU time taken from the guest, 0..99.
        self.cpu_throttle_pct = 0
        self._workload_ran_at = time.monotonic()

    def run_workload(self, step: int):
        """Run the guest's workload for the time since it last ran; return the WorkloadTick.

        Callers run it on a timer and right before a dirty-log sync, so the pages a
        migration pass sees dirtied follow the elapsed time, not the timer's phase.
        """
        now = time.monotonic()
        elapsed_s, self._workload_ran_at = now - self._workload_ran_at, now
        if self.paused:
            return None
        return self.workload.run(elapsed_s, self.utilization(step), self.cpu_throttle_pct)

    @property
    def memory_bytes(self) -> int:
        return self.guest.size_bytes

    @property
    def page_count(self) -> int:
        return self.guest.page_count

    def utilization(self, step: int) -> float:
        """CPU utilization (0..1) at a trace step; the trace repeats after its end."""
        return self.trace[step % len(self.trace)] / 100.0

    def demand_mips(self, step: int) -> float:
        return self.utilization(step) * self.mips

    def spec(self) -> dict:
        """Return the spec a destination host needs to run this VM."""
        return {"trace": self.trace, "mips": self.mips, "memory_bytes": self.memory_bytes, "seed": self.seed,
                "max_dirty_rate_pages_per_s": self.max_dirty_rate_pages_per_s}

    def memory_runs(self, max_pages: int = 1024) -> Iterator[tuple[int, list[bytes | memoryview]]]:
        """Yield the memory image for the host's store as (first page, page contents) runs.

        A run contains at most `max_pages` adjacent pages with contents. Zero
        pages, and poisoned pages whose contents are lost, are left out, so a
        store writes them as zeros. Views into the host's frames are live:
        write them out before the guest runs again.
        """
        guest = self.guest
        first, run = 0, []
        for page, data in enumerate(guest.host.read_frames(guest.host_frames(range(self.page_count)))):
            if data is None:
                if run:
                    yield first, run
                    run = []
                continue
            if not run:
                first = page
            run.append(data)
            if len(run) == max_pages:
                yield first, run
                run = []
        if run:
            yield first, run

    def digest(self) -> str:
        return memory_digest(self.guest)


def memory_digest(guest: GuestMemory, excluded_pages: Iterable[int] | None = None) -> str:
    """Return digest_checksums() of the page checksums, with NO_CHECKSUM for each page in `excluded_pages`.

    By default the VM's own poisoned pages are left out. A migration passes the
    source's poisoned pages to both sides, so both digests cover the same pages.
    A PageChecksums table filled by a migration gives the same digest.
    """
    excluded = guest.poisoned_pages() if excluded_pages is None else set(excluded_pages)
    host, page_map = guest.host, guest.page_map

    def checksums():
        for page in range(guest.page_count):
            if page in excluded:
                yield NO_CHECKSUM
                continue
            data = host.read_frame(page_map.host_frame(page))
            yield ZERO_PAGE_CHECKSUM if data is None else page_checksum(data)

    return digest_checksums(checksums())


def page_checksums(guest: GuestMemory) -> tuple[bytes, list[int]]:
    """Return 16-byte checksums of every page in order (zeros for a poisoned page) and the poisoned pages."""
    digests = guest.page_digests()
    empty = bytes(16)
    return b"".join(digests.get(page, empty) for page in range(guest.page_count)), sorted(guest.poisoned_pages())


ARENA_LIMIT_BYTES = 64 * 1024**3


class HostRam:
    """The host's VM RAM: frames, their error map, and each VM's frames.

    Frame numbers count 4 KiB frames of the RAM VMs get, from 0; `dcfleet inject
    memory-error --frame` uses them.
    """

    def __init__(self, memory_bytes: int) -> None:
        frame_count = memory_bytes // PAGE_SIZE_BYTES
        # The arena is an anonymous mapping: the kernel backs only the frames written. It
        # reserves address space for the whole host, so very large hosts use the sparse store.
        store = ArenaFrameStore(frame_count) if memory_bytes <= ARENA_LIMIT_BYTES else None
        self.frames = HostMemory(frame_count, store)
        self._page_maps: dict[str, AllocatedPageMap] = {}

    @property
    def errors(self):
        return self.frames.errors

    def create_vm(self, vm_id: str, trace: list[int], mips: float, memory_bytes: int, seed: int,
                  max_dirty_rate_pages_per_s: float = DEFAULT_MAX_DIRTY_RATE_PAGES_PER_S,
                  *, contents: bytes | None = None, fill: bool = True) -> GuestVm:
        """Give a VM frames and its memory: `contents` restores an image, `fill` populates from the seed.

        Raises OutOfHostFrames when the host lacks free frames.
        """
        guest = GuestMemory(vm_id, self.frames, self._page_map(vm_id, memory_bytes // PAGE_SIZE_BYTES))
        if contents is not None:
            _load_image(guest, contents)
        elif fill:
            populate(guest, seed=seed, nonzero_fraction=NONZERO_FRACTION)
        return GuestVm(vm_id, trace, mips, seed, guest, max_dirty_rate_pages_per_s)

    def _page_map(self, vm_id: str, page_count: int) -> GuestPageMap:
        # NOTE: the stage-2 tables in _tables.py map guest pages to frames of their own
        # frame pool, built at boot, while VMs restored from the store need frames before
        # boot. Guest memory therefore takes frames from this allocator, so a frame number
        # here is not the frame the VM's stage-2 tables name.
        if vm_id in self._page_maps:
            self.release(vm_id)
        page_map = AllocatedPageMap.allocate(self.frames, page_count)
        self._page_maps[vm_id] = page_map
        return page_map

    def owner_of(self, frame: int) -> tuple[str, int] | None:
        """Return the VM and guest page that a host frame backs, or None for a free frame."""
        for vm_id, page_map in self._page_maps.items():
            try:
                return vm_id, page_map.frames.index(frame)
            except ValueError:
                continue
        return None

    def release(self, vm_id: str) -> None:
        """Return a VM's frames; their contents go, their hardware errors stay in the error map."""
        page_map = self._page_maps.pop(vm_id, None)
        if page_map is not None:
            self.frames.free(page_map.frames)

    def keep_only(self, vm_ids: Iterable[str]) -> list[str]:
        """Release the frames of every VM not in `vm_ids`; return the VMs released."""
        held = set(vm_ids)
        gone = [vm_id for vm_id in self._page_maps if vm_id not in held]
        for vm_id in gone:
            self.release(vm_id)
        return gone


def _load_image(guest: GuestMemory, contents: bytes) -> None:
    if len(contents) != guest.size_bytes:
        raise ValueError(f"memory image of VM {guest.vm_id!r} has {len(contents)} bytes, expected {guest.size_bytes}")
    view = memoryview(contents)
    for page in range(guest.page_count):
        data = view[page * PAGE_SIZE_BYTES:(page + 1) * PAGE_SIZE_BYTES]
        if data != _ZERO_PAGE:
            guest.store_page(page, data)
