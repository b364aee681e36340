"""A host's RAM as migration_core frames with an error map, and its VMs' guest memory.

No bus code here: the host agent feeds these classes and publishes what they report.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ..migration_core import (
    PAGE_SIZE_BYTES,
    AllocatedPageMap,
    ArenaFrameStore,
    GuestMemory,
    GuestPageMap,
    GuestPageOutOfRange,
    GuestWorkload,
    HostMemory,
    PageKind,
    decode_batch,
    populate,
)

# Share of guest pages a booted guest has written; the rest are zero pages, never stored.
NONZERO_FRACTION = 0.75
DEFAULT_MAX_DIRTY_RATE_PAGES_PER_S = 2000.0
_ZERO_PAGE = bytes(PAGE_SIZE_BYTES)
_ZERO_DIGEST = hashlib.blake2b(_ZERO_PAGE, digest_size=16).digest()


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

    @property
    def memory(self) -> bytes:
        """The memory image for the host's store; poisoned pages are stored as zeros."""
        host = self.guest.host
        frames = self.guest.page_map
        parts = []
        for page in range(self.page_count):
            data = host.read_frame(frames.host_frame(page))
            parts.append(_ZERO_PAGE if data is None else data)
        return b"".join(parts)

    def digest(self) -> str:
        return memory_digest(self.guest)


def memory_digest(guest: GuestMemory, excluded_pages: Iterable[int] | None = None) -> str:
    """BLAKE2b over (page number, page checksum) of every page outside `excluded_pages`, as hex.

    By default the VM's own poisoned pages are left out. A migration passes the
    source's poisoned pages to both sides, so both digests cover the same pages.
    """
    excluded = guest.poisoned_pages() if excluded_pages is None else set(excluded_pages)
    host, page_map = guest.host, guest.page_map
    digest = hashlib.blake2b(digest_size=32)
    for page in range(guest.page_count):
        if page in excluded:
            continue
        data = host.read_frame(page_map.host_frame(page))
        page_digest = _ZERO_DIGEST if data is None else hashlib.blake2b(data, digest_size=16).digest()
        digest.update(page.to_bytes(8, "big") + page_digest)
    return digest.hexdigest()


_PAGE_NUMBER_BYTES = 8
_CHECKSUM_BYTES = 16
_TABLE_RECORD_BYTES = _PAGE_NUMBER_BYTES + _CHECKSUM_BYTES
_NO_CHECKSUM = bytes(_CHECKSUM_BYTES)


class PageChecksums:
    """The BLAKE2b-128 checksum of each guest page as a migration last sent or received it.

    The table holds one (page number, checksum) record per page in page order,
    the same bytes memory_digest() feeds BLAKE2b, so `digest()` equals
    memory_digest() of memory holding those pages while hashing only the table.
    A page not yet recorded has an all-zero checksum, which no page's BLAKE2b
    checksum equals in practice, so a page that never arrived makes digests differ.
    """

    def __init__(self, vm_id: str, page_count: int) -> None:
        if type(page_count) is not int or page_count <= 0:
            raise ValueError(f"invalid page_count {page_count!r}: expected a positive int")
        self.vm_id = vm_id
        self.page_count = page_count
        self._table = bytearray(b"".join(page.to_bytes(_PAGE_NUMBER_BYTES, "big") + _NO_CHECKSUM
                                         for page in range(page_count)))
        # Pages whose latest record was an ERROR record: their contents are lost.
        self.error_pages: set[int] = set()

    def record_batch(self, payload: bytes | bytearray | memoryview) -> None:
        """Record every page of one page batch (migration_core wire format), in record order.

        Raises MalformedPageBatch or GuestPageOutOfRange, having recorded nothing,
        for a batch the destination's apply would refuse.
        """
        records = decode_batch(payload)
        for record in records:
            if record.guest_page >= self.page_count:
                raise GuestPageOutOfRange(self.vm_id, record.guest_page, self.page_count)
        table, errors = self._table, self.error_pages
        for kind, page, data in records:
            offset = page * _TABLE_RECORD_BYTES + _PAGE_NUMBER_BYTES
            if kind is PageKind.DATA:
                table[offset:offset + _CHECKSUM_BYTES] = hashlib.blake2b(data, digest_size=16).digest()
                errors.discard(page)
            elif kind is PageKind.ZERO:
                table[offset:offset + _CHECKSUM_BYTES] = _ZERO_DIGEST
                errors.discard(page)
            else:
                table[offset:offset + _CHECKSUM_BYTES] = _NO_CHECKSUM
                errors.add(page)

    def digest(self, excluded_pages: Iterable[int]) -> str:
        """BLAKE2b-256 over the records of every page outside `excluded_pages`, as hex (see memory_digest)."""
        skipped = sorted({page for page in excluded_pages if 0 <= page < self.page_count})
        view = memoryview(self._table)
        digest = hashlib.blake2b(digest_size=32)
        start = 0
        for page in skipped:
            digest.update(view[start * _TABLE_RECORD_BYTES:page * _TABLE_RECORD_BYTES])
            start = page + 1
        digest.update(view[start * _TABLE_RECORD_BYTES:])
        return digest.hexdigest()


class ChecksumRecorder:
    """Fills a PageChecksums from page batches on one worker thread, in the order they were given.

    BLAKE2b releases the GIL on page-sized input, so the checksums cost the
    event loop little. One thread keeps the order: a page sent in two passes
    ends with the checksum of the later one.
    """

    def __init__(self, vm_id: str, page_count: int) -> None:
        self.table = PageChecksums(vm_id, page_count)
        self.error: Exception | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-checksums")

    def submit(self, payload: bytes | bytearray | memoryview) -> None:
        """Queue a batch for recording; `payload` must not change afterwards."""
        self._executor.submit(self._record, payload)

    def _record(self, payload: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            return
        try:
            self.table.record_batch(payload)
        except ValueError as exc:
            self.error = exc

    async def drain(self) -> PageChecksums:
        """Wait until every submitted batch is recorded; raise the first recording error."""
        await asyncio.wrap_future(self._executor.submit(lambda: None))
        if self.error is not None:
            raise self.error
        return self.table

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


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
