"""Table construction: a page allocator for table pages and a builder that maps ranges."""

from __future__ import annotations

import struct

from ._errors import (
    InvalidRegion,
    MappingConflict,
    RegionBeyondOutputSize,
    RegionMisaligned,
    TableRegionExhausted,
    WritableExecutableRejected,
)
from ._format import (
    ENTRIES_PER_TABLE,
    LAST_LEVEL,
    EntryKind,
    TableFormat,
    entry_size_bytes,
    table_index,
)
from ._memory import PAGE_SIZE_BYTES, PhysicalMemory
from ._rights import Rights

_ENTRY_BYTES = 8


class TableAllocator:
    """Hands out zeroed 4 KiB table pages from one physical region, lowest first."""

    def __init__(self, memory: PhysicalMemory, name: str, base: int, size_bytes: int) -> None:
        if base & (PAGE_SIZE_BYTES - 1) or size_bytes & (PAGE_SIZE_BYTES - 1):
            raise RegionMisaligned(name, base | size_bytes, PAGE_SIZE_BYTES)
        if base + size_bytes > memory.size_bytes:
            raise RegionBeyondOutputSize(name, base + size_bytes, memory.size_bytes)
        self.memory = memory
        self.name = name
        self.base = base
        self.size_bytes = size_bytes
        self._next_address = base

    @property
    def pages_used(self) -> int:
        return (self._next_address - self.base) // PAGE_SIZE_BYTES

    @property
    def bytes_used(self) -> int:
        return self._next_address - self.base

    def allocate(self) -> int:
        if self._next_address >= self.base + self.size_bytes:
            raise TableRegionExhausted(self.name, self.size_bytes)
        address = self._next_address
        self._next_address += PAGE_SIZE_BYTES
        frame = self.memory.frame_for_write(address // PAGE_SIZE_BYTES)
        frame[:] = bytes(PAGE_SIZE_BYTES)
        return address


class TableBuilder:
    """Builds one table tree, using block entries wherever alignment and size allow.

    A request that is writable and executable raises WritableExecutableRejected unless
    ``allow_writable_executable`` is set (firmware tables and guest RAM at stage 2 need it).
    """

    def __init__(
        self,
        memory: PhysicalMemory,
        table_format: TableFormat,
        allocator: TableAllocator,
        *,
        allow_writable_executable: bool = False,
    ) -> None:
        self.memory = memory
        self.table_format = table_format
        self.allocator = allocator
        self.allow_writable_executable = allow_writable_executable
        self.root_address = allocator.allocate()

    def map_range(
        self,
        input_address: int,
        output_address: int,
        size_bytes: int,
        rights: Rights,
        *,
        region_name: str,
        use_blocks: bool = True,
    ) -> None:
        """Map ``size_bytes`` from ``input_address`` to ``output_address`` with ``rights``."""
        self._check_request(input_address, output_address, size_bytes, rights, region_name)
        self._map(self.root_address, 0, input_address, output_address, size_bytes, rights,
                  region_name, use_blocks)

    def _check_request(
        self, input_address: int, output_address: int, size_bytes: int, rights: Rights,
        region_name: str,
    ) -> None:
        if size_bytes <= 0:
            raise InvalidRegion(region_name, f"size {size_bytes:#x} is not positive")
        for value in (input_address, output_address, size_bytes):
            if value & (PAGE_SIZE_BYTES - 1):
                raise RegionMisaligned(region_name, value, PAGE_SIZE_BYTES)
        input_bits = self.table_format.input_bits
        if input_address < 0 or input_address + size_bytes > 1 << input_bits:
            raise InvalidRegion(
                region_name,
                f"input range ends at {input_address + size_bytes:#x}, beyond {input_bits} bits",
            )
        output_limit = min(self.table_format.output_limit_bytes, self.memory.size_bytes)
        if output_address < 0 or output_address + size_bytes > output_limit:
            raise RegionBeyondOutputSize(region_name, output_address + size_bytes, output_limit)
        if rights.writable and rights.executable and not self.allow_writable_executable:
            raise WritableExecutableRejected(region_name)

    def _map(
        self, table_address: int, level: int, input_address: int, output_address: int,
        size_bytes: int, rights: Rights, region_name: str, use_blocks: bool,
    ) -> None:
        span = entry_size_bytes(level)
        while size_bytes:
            aligned = not (input_address | output_address) & (span - 1)
            leaf_allowed = level == LAST_LEVEL or (
                use_blocks and level in self.table_format.block_levels
            )
            if leaf_allowed and aligned and size_bytes >= span:
                count = min(size_bytes // span, ENTRIES_PER_TABLE - table_index(input_address, level))
                self._write_leaf_run(table_address, level, input_address, output_address, count,
                                     rights, region_name)
                step = count * span
            else:
                step = min(size_bytes, span - (input_address & (span - 1)))
                next_table = self._next_table(table_address, level, input_address, region_name)
                self._map(next_table, level + 1, input_address, output_address, step, rights,
                          region_name, use_blocks)
            input_address += step
            output_address += step
            size_bytes -= step

    def _next_table(
        self, table_address: int, level: int, input_address: int, region_name: str
    ) -> int:
        entry_address = table_address + table_index(input_address, level) * _ENTRY_BYTES
        raw = self.memory.read_u64(entry_address)
        entry = self.table_format.decode(raw, level)
        if entry.kind is EntryKind.TABLE:
            return entry.address
        if entry.kind is not EntryKind.INVALID:
            raise MappingConflict(region_name, input_address)
        next_table = self.allocator.allocate()
        self.memory.write_u64(entry_address, self.table_format.encode_table(next_table))
        return next_table

    def _write_leaf_run(
        self, table_address: int, level: int, input_address: int, output_address: int,
        count: int, rights: Rights, region_name: str,
    ) -> None:
        # The output address field sits above every attribute bit it could carry into,
        # so consecutive leaves differ only by the span added to the first descriptor.
        first_index = table_index(input_address, level)
        frame = self.memory.frame_for_write(table_address // PAGE_SIZE_BYTES)
        offset = first_index * _ENTRY_BYTES
        span = entry_size_bytes(level)
        existing = struct.unpack_from(f"<{count}Q", frame, offset)
        if any(existing):
            for position, raw in enumerate(existing):
                if self.table_format.decode(raw, level).kind is not EntryKind.INVALID:
                    raise MappingConflict(region_name, input_address + position * span)
        first = self.table_format.encode_leaf(level, output_address, rights)
        struct.pack_into(f"<{count}Q", frame, offset, *range(first, first + count * span, span))


def copy_tables(
    memory: PhysicalMemory, table_format: TableFormat, source_root: int, allocator: TableAllocator
) -> int:
    """Copy a whole table tree into pages from ``allocator``; return the copy's root address.

    Table pointers in the copy are rewritten to the copied tables; leaf entries are kept
    bit for bit.
    """
    return _copy_table(memory, table_format, source_root, 0, allocator)


def _copy_table(
    memory: PhysicalMemory, table_format: TableFormat, source: int, level: int,
    allocator: TableAllocator,
) -> int:
    destination = allocator.allocate()
    entries = list(struct.unpack("<512Q", memory.read_frame(source // PAGE_SIZE_BYTES)))
    if level < LAST_LEVEL:
        for index, raw in enumerate(entries):
            if raw and table_format.decode(raw, level).kind is EntryKind.TABLE:
                child = _copy_table(memory, table_format, raw & table_format.address_mask,
                                    level + 1, allocator)
                entries[index] = table_format.replace_address(raw, child)
    frame = memory.frame_for_write(destination // PAGE_SIZE_BYTES)
    struct.pack_into("<512Q", frame, 0, *entries)
    return destination
