"""Page tables for dcfleet hosts and VMs.

Emulated physical memory and memory maps, the AArch64 (VMSAv8-64 stage 1 and stage 2,
4 KiB granule, 48-bit) and x86-64 4-level formats, a table builder, the firmware stage and
first-stage boot loader steps, stage-2 tables for VMs, a walker and a ptdump-style dump.
Everything here is pure: it reads and writes only the PhysicalMemory it is given.
"""

from ._aarch64 import MAIR_VALUE, AArch64Stage1Format, AArch64Stage2Format
from ._arch import Architecture, table_format
from ._boot import (
    BootLayout,
    BootResult,
    BootStep,
    BootStepRecord,
    Firmware,
    boot_host_tables,
    copy_firmware_tables,
    install_final_tables,
    reprocess_tables,
    run_firmware,
)
from ._builder import TableAllocator, TableBuilder, copy_tables
from ._dump import MappedRange, dump_mappings, find_writable_executable, format_ptdump
from ._errors import (
    BootOrderViolation,
    GuestPageNotMapped,
    InputAddressOutOfRange,
    InvalidRegion,
    MappingConflict,
    PageTableError,
    RegionBeyondOutputSize,
    RegionMisaligned,
    RegionOverlap,
    TableRegionExhausted,
    WritableExecutableRejected,
)
from ._format import Entry, EntryKind, TableFormat
from ._memory import PAGE_SIZE_BYTES, MemoryKind, MemoryMap, PhysicalMemory, Region
from ._rights import (
    CODE_RIGHTS,
    DATA_RIGHTS,
    DEVICE_RIGHTS,
    READ_ONLY_DATA_RIGHTS,
    Access,
    MemoryType,
    Rights,
)
from ._stage2 import (
    GUEST_RAM_RIGHTS,
    GuestMemoryRange,
    Stage2Tables,
    build_stage2_tables,
    normalize_guest_ranges,
)
from ._walker import Fault, FaultKind, Translation, translate
from ._x86_64 import X86_64Format

__all__ = [
    # memory
    "PAGE_SIZE_BYTES",
    "PhysicalMemory",
    "MemoryKind",
    "MemoryMap",
    "Region",
    # rights and formats
    "Access",
    "MemoryType",
    "Rights",
    "CODE_RIGHTS",
    "DATA_RIGHTS",
    "DEVICE_RIGHTS",
    "READ_ONLY_DATA_RIGHTS",
    "GUEST_RAM_RIGHTS",
    "Architecture",
    "table_format",
    "TableFormat",
    "Entry",
    "EntryKind",
    "AArch64Stage1Format",
    "AArch64Stage2Format",
    "X86_64Format",
    "MAIR_VALUE",
    # building
    "TableAllocator",
    "TableBuilder",
    "copy_tables",
    # boot
    "BootLayout",
    "BootResult",
    "BootStep",
    "BootStepRecord",
    "Firmware",
    "run_firmware",
    "copy_firmware_tables",
    "reprocess_tables",
    "install_final_tables",
    "boot_host_tables",
    # stage 2
    "GuestMemoryRange",
    "Stage2Tables",
    "build_stage2_tables",
    "normalize_guest_ranges",
    # walking and dumping
    "translate",
    "Translation",
    "Fault",
    "FaultKind",
    "MappedRange",
    "dump_mappings",
    "format_ptdump",
    "find_writable_executable",
    # errors
    "PageTableError",
    "InvalidRegion",
    "RegionOverlap",
    "RegionMisaligned",
    "RegionBeyondOutputSize",
    "WritableExecutableRejected",
    "MappingConflict",
    "TableRegionExhausted",
    "BootOrderViolation",
    "InputAddressOutOfRange",
    "GuestPageNotMapped",
]
