"""x86-64 4-level paging entries (Intel SDM vol. 3A, section 4.5; AMD APM vol. 2, 5.3).

Memory types assume the PAT at its reset value: PWT/PCD 0/0 is write-back, 0/1 (PCD
only) is UC-, 1/1 is UC. Both Device types encode as UC and decode as Device-nGnRE.
"""

from __future__ import annotations

from ._format import (
    INVALID_ENTRY,
    LAST_LEVEL,
    Entry,
    EntryKind,
    TableFormat,
    entry_size_bytes,
)
from ._rights import MemoryType, Rights

P = 1 << 0
RW = 1 << 1
US = 1 << 2
PWT = 1 << 3
PCD = 1 << 4
A = 1 << 5
D = 1 << 6
PS = 1 << 7
G = 1 << 8
NX = 1 << 63

_CACHE_BITS = {
    MemoryType.NORMAL: 0,
    MemoryType.NORMAL_NC: PCD,
    MemoryType.DEVICE_nGnRE: PCD | PWT,
    MemoryType.DEVICE_nGnRnE: PCD | PWT,
}
_MEMORY_TYPE_BY_CACHE_BITS = {
    0: MemoryType.NORMAL,
    PCD: MemoryType.NORMAL_NC,
    PCD | PWT: MemoryType.DEVICE_nGnRE,
}


class X86_64Format(TableFormat):
    """Long-mode 4-level paging, or AMD nested paging (NPT) when ``nested`` is set.

    Nested tables use the same layout, with US set in every entry because the CPU checks
    nested walks as user accesses; they carry no G bit.
    """

    output_bits = 52
    address_mask = ((1 << 52) - 1) & ~0xFFF
    has_access_flag = False
    # Lower canonical half: bit 47 set needs bits 63:48 set too, which is the kernel half.
    input_bits = 47

    def __init__(self, *, nested: bool = False) -> None:
        self.nested = nested
        self.name = "x86_64-npt" if nested else "x86_64"

    def encode_table(self, table_address: int) -> int:
        raw = (table_address & self.address_mask) | P | RW | A
        return raw | US if self.nested else raw

    def encode_leaf(self, level: int, output_address: int, rights: Rights) -> int:
        raw = (output_address & self.address_mask) | P | A
        raw |= PS if level != LAST_LEVEL else 0
        raw |= RW | D if rights.writable else 0
        raw |= US if rights.user or self.nested else 0
        raw |= 0 if self.nested else G
        raw |= _CACHE_BITS[rights.memory_type]
        raw |= 0 if rights.executable else NX
        return raw

    def decode(self, raw: int, level: int) -> Entry:
        if not raw & P:
            return INVALID_ENTRY
        limit_or_rights = Rights(
            readable=True,
            writable=bool(raw & RW),
            executable=not raw & NX,
            user=bool(raw & US),
        )
        if level == 0 or (level in (1, 2) and not raw & PS):
            return Entry(EntryKind.TABLE, raw & self.address_mask, limit_or_rights)
        cache_bits = raw & (PCD | PWT)
        memory_type = _MEMORY_TYPE_BY_CACHE_BITS.get(cache_bits, MemoryType.NORMAL_NC)
        rights = Rights(
            readable=True,
            writable=limit_or_rights.writable,
            executable=limit_or_rights.executable,
            user=limit_or_rights.user,
            memory_type=memory_type,
        )
        kind = EntryKind.PAGE if level == LAST_LEVEL else EntryKind.BLOCK
        # Bit 12 of a large-page entry is PAT, so the address is masked to the page size.
        address = raw & self.address_mask & ~(entry_size_bytes(level) - 1)
        return Entry(kind, address, rights)
