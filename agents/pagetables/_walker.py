"""Table walker: translates one input address the way the CPU's table walk does."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._errors import InputAddressOutOfRange
from ._format import (
    LEVEL_SHIFTS,
    EntryKind,
    TableFormat,
    entry_size_bytes,
    limit_rights,
    table_index,
)
from ._memory import PhysicalMemory
from ._rights import Access, Rights

_ENTRY_BYTES = 8


class FaultKind(enum.Enum):
    TRANSLATION = "translation"
    ACCESS_FLAG = "access_flag"
    PERMISSION = "permission"


@dataclass(frozen=True)
class Translation:
    input_address: int
    output_address: int
    level: int  # level of the leaf entry: 1 (1 GiB block), 2 (2 MiB block) or 3 (page)
    rights: Rights

    @property
    def mapping_size_bytes(self) -> int:
        return entry_size_bytes(self.level)


@dataclass(frozen=True)
class Fault:
    input_address: int
    level: int
    kind: FaultKind
    access: Access


def translate(
    memory: PhysicalMemory,
    table_format: TableFormat,
    root_address: int,
    input_address: int,
    access: Access = Access.READ,
) -> Translation | Fault:
    """Walk the tables at ``root_address`` for ``input_address`` and check ``access``.

    Checks follow the AArch64 priority: translation, then access flag, then permission.
    Only the lower half of the input space is walked (the TTBR0 range, or canonical low
    x86-64 addresses); other addresses raise InputAddressOutOfRange.
    """
    if input_address < 0 or input_address >> table_format.input_bits:
        raise InputAddressOutOfRange(input_address, table_format.input_bits)
    table_address = root_address
    limit: Rights | None = None
    for level in range(len(LEVEL_SHIFTS)):
        raw = memory.read_u64(table_address + table_index(input_address, level) * _ENTRY_BYTES)
        entry = table_format.decode(raw, level)
        if entry.kind is EntryKind.INVALID:
            return Fault(input_address, level, FaultKind.TRANSLATION, access)
        if entry.kind is EntryKind.TABLE:
            limit = limit_rights(entry.rights, limit) if entry.rights is not None else limit
            table_address = entry.address
            continue
        if not entry.accessed:
            return Fault(input_address, level, FaultKind.ACCESS_FLAG, access)
        rights = limit_rights(entry.rights, limit)
        if not rights.allows(access):
            return Fault(input_address, level, FaultKind.PERMISSION, access)
        offset = input_address & (entry_size_bytes(level) - 1)
        return Translation(input_address, entry.address + offset, level, rights)
    raise AssertionError("a level-3 entry is always invalid or a page")
