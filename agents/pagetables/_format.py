"""Descriptor formats: the common shape of a 4-level, 4 KiB-granule table format."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._rights import Rights

ENTRIES_PER_TABLE = 512
LEVEL_SHIFTS = (39, 30, 21, 12)  # input address bits resolved at levels 0 to 3
INPUT_BITS = 48
LAST_LEVEL = 3


def entry_size_bytes(level: int) -> int:
    """Return the span of input address one entry at ``level`` covers."""
    return 1 << LEVEL_SHIFTS[level]


def table_index(input_address: int, level: int) -> int:
    return (input_address >> LEVEL_SHIFTS[level]) & (ENTRIES_PER_TABLE - 1)


class EntryKind(enum.Enum):
    INVALID = "invalid"
    TABLE = "table"
    BLOCK = "block"
    PAGE = "page"


@dataclass(frozen=True)
class Entry:
    """A decoded descriptor.

    For a table entry, ``rights`` holds the limits the entry puts on everything below it
    (AArch64 APTable/PXNTable, x86-64 RW/US/NX of the upper levels).
    """

    kind: EntryKind
    address: int = 0
    rights: Rights | None = None
    accessed: bool = True  # AArch64 AF; x86-64 sets A itself and never faults on it


INVALID_ENTRY = Entry(EntryKind.INVALID)


class TableFormat:
    """Bit layout of one translation table format.

    Subclasses define the descriptor encodings; the level structure (4 levels of 512
    entries, blocks at levels 1 and 2) is common to AArch64 4 KiB granule and x86-64.
    """

    name: str = ""
    output_bits: int = 48
    address_mask: int = ((1 << 48) - 1) & ~0xFFF
    block_levels: frozenset[int] = frozenset({1, 2})
    has_access_flag: bool = True
    # Width of the input addresses one root table translates (TTBR0 range on AArch64).
    input_bits: int = INPUT_BITS

    @property
    def output_limit_bytes(self) -> int:
        return 1 << self.output_bits

    def encode_table(self, table_address: int) -> int:
        raise NotImplementedError

    def encode_leaf(self, level: int, output_address: int, rights: Rights) -> int:
        raise NotImplementedError

    def decode(self, raw: int, level: int) -> Entry:
        raise NotImplementedError

    def replace_address(self, raw: int, address: int) -> int:
        """Return ``raw`` with its output or next-table address replaced by ``address``."""
        return (raw & ~self.address_mask) | (address & self.address_mask)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def limit_rights(rights: Rights, limit: Rights | None) -> Rights:
    """Apply the limits of the table entries above a leaf to the leaf's own rights."""
    if limit is None:
        return rights
    return Rights(
        readable=rights.readable and limit.readable,
        writable=rights.writable and limit.writable,
        executable=rights.executable and limit.executable,
        user=rights.user and limit.user,
        memory_type=rights.memory_type,
    )
