"""AArch64 VMSAv8-64 descriptors: 4 KiB granule, 48-bit input and output addresses.

Bit positions follow the Arm Architecture Reference Manual (DDI 0487), section D8.3
"Translation table descriptor formats".
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

_VALID = 1 << 0
_TABLE_OR_PAGE = 1 << 1
_SHIFT_ATTR_INDX = 2
_SHIFT_AP = 6
_AP2_READ_ONLY = 1 << 7
_AP1_EL0 = 1 << 6
_SHIFT_SH = 8
_SH_INNER_SHAREABLE = 0b11
_AF = 1 << 10
_NG = 1 << 11
_PXN = 1 << 53
_UXN = 1 << 54
_XN = 1 << 54  # stage 2 XN[1]; XN[0] (bit 53) is RES0 without FEAT_XNX
_PXN_TABLE = 1 << 59
_UXN_TABLE = 1 << 60
_AP_TABLE_NO_EL0 = 1 << 61
_AP_TABLE_READ_ONLY = 1 << 62
_SHIFT_MEM_ATTR = 2
_S2AP_READ = 1 << 6
_S2AP_WRITE = 1 << 7

# MAIR_EL1/MAIR_EL2 attribute index used for each memory type by the stage-1 tables.
ATTR_INDEX = {
    MemoryType.NORMAL: 0,  # 0xFF: Normal, inner and outer write-back non-transient RW-allocate
    MemoryType.DEVICE_nGnRE: 1,  # 0x04
    MemoryType.NORMAL_NC: 2,  # 0x44: Normal, inner and outer non-cacheable
    MemoryType.DEVICE_nGnRnE: 3,  # 0x00
}
_MAIR_ATTRIBUTES = {
    MemoryType.NORMAL: 0xFF,
    MemoryType.DEVICE_nGnRE: 0x04,
    MemoryType.NORMAL_NC: 0x44,
    MemoryType.DEVICE_nGnRnE: 0x00,
}
MAIR_VALUE = sum(_MAIR_ATTRIBUTES[kind] << (8 * index) for kind, index in ATTR_INDEX.items())
_MEMORY_TYPE_BY_INDEX = {index: kind for kind, index in ATTR_INDEX.items()}

# Stage-2 MemAttr[3:0] with HCR_EL2.FWB clear: [3:2] 0b00 is Device ([1:0] picks nGnRnE,
# nGnRE, ...), otherwise [3:2] and [1:0] are the outer and inner cacheability.
STAGE2_MEM_ATTR = {
    MemoryType.NORMAL: 0b1111,
    MemoryType.NORMAL_NC: 0b0101,
    MemoryType.DEVICE_nGnRE: 0b0001,
    MemoryType.DEVICE_nGnRnE: 0b0000,
}
_MEMORY_TYPE_BY_MEM_ATTR = {value: kind for kind, value in STAGE2_MEM_ATTR.items()}


def _shareability(memory_type: MemoryType) -> int:
    # Device memory is treated as outer shareable whatever SH says, so SH stays 0 there.
    if memory_type in (MemoryType.NORMAL, MemoryType.NORMAL_NC):
        return _SH_INNER_SHAREABLE << _SHIFT_SH
    return 0


def _descriptor_kind(raw: int, level: int) -> EntryKind:
    if not raw & _VALID:
        return EntryKind.INVALID
    if raw & _TABLE_OR_PAGE:
        return EntryKind.PAGE if level == LAST_LEVEL else EntryKind.TABLE
    # 0b01 is a block at levels 1 and 2 and reserved (invalid) at levels 0 and 3.
    return EntryKind.BLOCK if level in (1, 2) else EntryKind.INVALID


class AArch64Stage1Format(TableFormat):
    """Stage-1 descriptors of the EL1&0 regime (also EL2&0 with HCR_EL2.E2H set).

    ``Rights.executable`` is privileged execution (PXN clear); UXN is clear only on
    executable user mappings. Mappings are global (nG clear).
    """

    name = "aarch64-stage1"

    def encode_table(self, table_address: int) -> int:
        return (table_address & self.address_mask) | _TABLE_OR_PAGE | _VALID

    def encode_leaf(self, level: int, output_address: int, rights: Rights) -> int:
        raw = (output_address & self.address_mask) | _VALID | _AF
        raw |= _TABLE_OR_PAGE if level == LAST_LEVEL else 0
        raw |= ATTR_INDEX[rights.memory_type] << _SHIFT_ATTR_INDX
        raw |= _shareability(rights.memory_type)
        raw |= 0 if rights.writable else _AP2_READ_ONLY
        raw |= _AP1_EL0 if rights.user else 0
        raw |= 0 if rights.executable else _PXN
        raw |= 0 if rights.executable and rights.user else _UXN
        return raw

    def decode(self, raw: int, level: int) -> Entry:
        kind = _descriptor_kind(raw, level)
        if kind is EntryKind.INVALID:
            return INVALID_ENTRY
        if kind is EntryKind.TABLE:
            limit = Rights(
                writable=not raw & _AP_TABLE_READ_ONLY,
                executable=not raw & _PXN_TABLE,
                user=not raw & _AP_TABLE_NO_EL0,
            )
            return Entry(kind, raw & self.address_mask, limit)
        attr_index = (raw >> _SHIFT_ATTR_INDX) & 0b111
        memory_type = _MEMORY_TYPE_BY_INDEX.get(attr_index)
        if memory_type is None:
            raise ValueError(f"AttrIndx {attr_index} of descriptor {raw:#018x} is not in MAIR")
        ap = (raw >> _SHIFT_AP) & 0b11
        rights = Rights(
            readable=True,
            writable=not raw & _AP2_READ_ONLY,
            # AP[2:1] = 0b01 (EL0 writable) makes the page privileged execute-never.
            executable=not raw & _PXN and ap != 0b01,
            user=bool(raw & _AP1_EL0),
            memory_type=memory_type,
        )
        return Entry(kind, _output_address(raw, level, self.address_mask), rights, bool(raw & _AF))


class AArch64Stage2Format(TableFormat):
    """Stage-2 descriptors (guest-physical to host-physical), MemAttr read with FWB clear."""

    name = "aarch64-stage2"

    def encode_table(self, table_address: int) -> int:
        return (table_address & self.address_mask) | _TABLE_OR_PAGE | _VALID

    def encode_leaf(self, level: int, output_address: int, rights: Rights) -> int:
        raw = (output_address & self.address_mask) | _VALID | _AF
        raw |= _TABLE_OR_PAGE if level == LAST_LEVEL else 0
        raw |= STAGE2_MEM_ATTR[rights.memory_type] << _SHIFT_MEM_ATTR
        raw |= _shareability(rights.memory_type)
        raw |= _S2AP_READ if rights.readable else 0
        raw |= _S2AP_WRITE if rights.writable else 0
        raw |= 0 if rights.executable else _XN
        return raw

    def decode(self, raw: int, level: int) -> Entry:
        kind = _descriptor_kind(raw, level)
        if kind is EntryKind.INVALID:
            return INVALID_ENTRY
        if kind is EntryKind.TABLE:
            return Entry(kind, raw & self.address_mask, None)
        mem_attr = (raw >> _SHIFT_MEM_ATTR) & 0b1111
        memory_type = _MEMORY_TYPE_BY_MEM_ATTR.get(mem_attr)
        if memory_type is None:
            raise ValueError(f"MemAttr {mem_attr:#06b} of descriptor {raw:#018x} is not supported")
        rights = Rights(
            readable=bool(raw & _S2AP_READ),
            writable=bool(raw & _S2AP_WRITE),
            executable=not raw & _XN,
            user=False,
            memory_type=memory_type,
        )
        return Entry(kind, _output_address(raw, level, self.address_mask), rights, bool(raw & _AF))


def _output_address(raw: int, level: int, address_mask: int) -> int:
    return raw & address_mask & ~(entry_size_bytes(level) - 1)
