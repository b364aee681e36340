"""Listing of a table tree as merged ranges, printed in the manner of Linux's ptdump."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from ._format import (
    ENTRIES_PER_TABLE,
    EntryKind,
    TableFormat,
    entry_size_bytes,
    limit_rights,
)
from ._memory import PAGE_SIZE_BYTES, PhysicalMemory
from ._rights import Rights


@dataclass(frozen=True)
class MappedRange:
    """Input range [start, end) mapped contiguously to ``output_start`` with ``rights``."""

    start: int
    end: int
    output_start: int
    rights: Rights

    @property
    def size_bytes(self) -> int:
        return self.end - self.start

    @property
    def writable_executable(self) -> bool:
        return self.rights.writable and self.rights.executable

    def format_line(self) -> str:
        return (
            f"0x{self.start:016x}-0x{self.end:016x} {_format_size(self.size_bytes):>9}  "
            f"{self.rights.describe():<10} {self.rights.memory_type.value:<14} "
            f"-> 0x{self.output_start:016x}"
        )


def dump_mappings(
    memory: PhysicalMemory, table_format: TableFormat, root_address: int
) -> list[MappedRange]:
    """List every mapping under ``root_address``, merging neighbours with equal rights.

    Two ranges merge when their input and output addresses are both contiguous and their
    rights and memory types are equal, whatever the levels of the entries behind them.
    Leaves whose access flag is clear are listed too, because they are mapped but fault.
    """
    merged: list[MappedRange] = []
    for piece in _iter_leaf_runs(memory, table_format, root_address, 0, 0, None):
        if merged:
            last = merged[-1]
            if (
                last.end == piece.start
                and last.output_start + last.size_bytes == piece.output_start
                and last.rights == piece.rights
            ):
                merged[-1] = MappedRange(last.start, piece.end, last.output_start, last.rights)
                continue
        merged.append(piece)
    return merged


def _iter_leaf_runs(
    memory: PhysicalMemory, table_format: TableFormat, table_address: int, level: int,
    base: int, limit: Rights | None,
) -> Iterator[MappedRange]:
    entries = struct.unpack("<512Q", memory.read_frame(table_address // PAGE_SIZE_BYTES))
    span = entry_size_bytes(level)
    index = 0
    while index < ENTRIES_PER_TABLE:
        raw = entries[index]
        if not raw:
            index += 1
            continue
        entry = table_format.decode(raw, level)
        start = base + index * span
        if entry.kind is EntryKind.INVALID:
            index += 1
        elif entry.kind is EntryKind.TABLE:
            child_limit = limit_rights(entry.rights, limit) if entry.rights else limit
            yield from _iter_leaf_runs(memory, table_format, entry.address, level + 1, start,
                                       child_limit)
            index += 1
        else:
            count = _run_length(entries, index, span)
            rights = limit_rights(entry.rights, limit)
            yield MappedRange(start, start + count * span, entry.address, rights)
            index += count


def _run_length(entries: tuple[int, ...], index: int, span: int) -> int:
    # Entries whose only difference is an output address advancing by one span decode to
    # the same rights, so a run is found by comparing raw values without decoding each.
    first = entries[index]
    count = 1
    while index + count < ENTRIES_PER_TABLE and entries[index + count] == first + count * span:
        count += 1
    return count


def format_ptdump(ranges: list[MappedRange], *, title: str = "") -> str:
    """Render ranges one per line: start-end, size, rights (``RW NX``), memory type."""
    lines = [f"---[ {title} ]---"] if title else []
    lines.extend(mapped.format_line() for mapped in ranges)
    return "\n".join(lines)


def find_writable_executable(ranges: list[MappedRange]) -> list[MappedRange]:
    """Return the ranges that are both writable and executable (a W^X violation)."""
    return [mapped for mapped in ranges if mapped.writable_executable]


def _format_size(size_bytes: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size_bytes >= 1 << shift and not size_bytes & ((1 << shift) - 1):
            return f"{size_bytes >> shift}{unit}"
    return f"{size_bytes}B"
