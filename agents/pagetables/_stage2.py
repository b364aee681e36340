"""Stage-2 tables of a VM: guest-physical pages mapped to host-physical frames."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Sequence

from ._builder import TableAllocator, TableBuilder
from ._dump import MappedRange, dump_mappings
from ._errors import GuestPageNotMapped, InvalidRegion, MappingConflict
from ._format import TableFormat
from ._memory import PAGE_SIZE_BYTES, PhysicalMemory
from ._rights import Access, Rights
from ._walker import Translation, translate

_PAGE_SHIFT = 12

# Guest RAM is readable, writable and executable at stage 2; the guest's own stage 1
# decides what is executable inside the VM.
GUEST_RAM_RIGHTS = Rights(readable=True, writable=True, executable=True)


@dataclass(frozen=True)
class GuestMemoryRange:
    """``page_count`` guest pages from ``guest_page`` backed by frames from ``host_frame``."""

    guest_page: int
    host_frame: int
    page_count: int = 1

    @property
    def guest_end_page(self) -> int:
        return self.guest_page + self.page_count


def normalize_guest_ranges(
    mappings: Iterable[GuestMemoryRange | Sequence[int]],
) -> list[GuestMemoryRange]:
    """Validate (guest page, host frame[, page count]) items and merge contiguous ones.

    Raises InvalidRegion naming the guest page for a malformed item or a guest page
    mapped twice.
    """
    ranges = sorted((_as_range(item) for item in mappings), key=lambda r: r.guest_page)
    merged: list[GuestMemoryRange] = []
    for current in ranges:
        if merged and current.guest_page < merged[-1].guest_end_page:
            raise MappingConflict(f"guest page {current.guest_page:#x}",
                                  current.guest_page << _PAGE_SHIFT)
        if (
            merged
            and merged[-1].guest_end_page == current.guest_page
            and merged[-1].host_frame + merged[-1].page_count == current.host_frame
        ):
            last = merged[-1]
            merged[-1] = GuestMemoryRange(last.guest_page, last.host_frame,
                                          last.page_count + current.page_count)
        else:
            merged.append(current)
    return merged


def _as_range(item: GuestMemoryRange | Sequence[int]) -> GuestMemoryRange:
    if isinstance(item, GuestMemoryRange):
        candidate = item
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        candidate = GuestMemoryRange(*item)
    else:
        raise InvalidRegion(repr(item), "expected (guest page, host frame[, page count])")
    fields = (candidate.guest_page, candidate.host_frame, candidate.page_count)
    name = f"guest page {candidate.guest_page!r}"
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in fields):
        raise InvalidRegion(name, f"page numbers and count must be integers, got {item!r}")
    if candidate.guest_page < 0 or candidate.host_frame < 0 or candidate.page_count <= 0:
        raise InvalidRegion(name, f"negative page number or non-positive count in {item!r}")
    return candidate


class Stage2Tables:
    """A VM's stage-2 tables, with lookups from guest page to host frame and back."""

    def __init__(
        self, memory: PhysicalMemory, table_format: TableFormat, root_address: int,
        ranges: list[GuestMemoryRange], table_pages: int,
    ) -> None:
        self.memory = memory
        self.table_format = table_format
        self.root_address = root_address
        self.ranges = ranges
        self.table_pages = table_pages
        self._guest_starts = [r.guest_page for r in ranges]
        self._by_host = sorted(ranges, key=lambda r: r.host_frame)
        self._host_starts = [r.host_frame for r in self._by_host]

    def host_frame(self, guest_page: int) -> int:
        """Return the host frame backing ``guest_page``, from the table walk itself."""
        result = translate(self.memory, self.table_format, self.root_address,
                           guest_page << _PAGE_SHIFT, Access.READ)
        if not isinstance(result, Translation):
            raise GuestPageNotMapped(guest_page)
        return result.output_address >> _PAGE_SHIFT

    def host_frame_cached(self, guest_page: int) -> int:
        """Return the host frame for ``guest_page`` from the range list, without a walk."""
        index = bisect.bisect_right(self._guest_starts, guest_page) - 1
        if index >= 0 and guest_page < self.ranges[index].guest_end_page:
            found = self.ranges[index]
            return found.host_frame + guest_page - found.guest_page
        raise GuestPageNotMapped(guest_page)

    def guest_pages_for_host_frame(self, host_frame: int) -> list[int]:
        """Return every guest page backed by ``host_frame`` (empty if none)."""
        pages = []
        end = bisect.bisect_right(self._host_starts, host_frame)
        for candidate in self._by_host[:end]:
            if host_frame < candidate.host_frame + candidate.page_count:
                pages.append(candidate.guest_page + host_frame - candidate.host_frame)
        return sorted(pages)

    def dump(self) -> list[MappedRange]:
        return dump_mappings(self.memory, self.table_format, self.root_address)


def build_stage2_tables(
    memory: PhysicalMemory,
    table_format: TableFormat,
    mappings: Iterable[GuestMemoryRange | Sequence[int]],
    table_allocator: TableAllocator,
    *,
    rights: Rights = GUEST_RAM_RIGHTS,
) -> Stage2Tables:
    """Build stage-2 tables for ``mappings`` with table pages from ``table_allocator``.

    Host frames must lie inside ``memory``; block entries are used where a guest range and
    its host frames are equally aligned.
    """
    ranges = normalize_guest_ranges(mappings)
    pages_before = table_allocator.pages_used
    builder = TableBuilder(memory, table_format, table_allocator, allow_writable_executable=True)
    for guest_range in ranges:
        builder.map_range(
            guest_range.guest_page * PAGE_SIZE_BYTES,
            guest_range.host_frame * PAGE_SIZE_BYTES,
            guest_range.page_count * PAGE_SIZE_BYTES,
            rights,
            region_name=f"guest page {guest_range.guest_page:#x}",
        )
    return Stage2Tables(memory, table_format, builder.root_address, ranges,
                        table_allocator.pages_used - pages_before)
