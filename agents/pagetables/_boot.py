"""Firmware stage and the three steps of the first-stage boot loader.

The firmware builds identity-mapped tables for itself. While it still runs, the loader
copies them to a staging region, then rebuilds the copy into the hypervisor's tables with
rights taken from the memory map, and after the firmware is quiesced copies the result
into its final region. Each step returns a BootStepRecord for the log and event stream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._builder import TableAllocator, TableBuilder, copy_tables
from ._dump import MappedRange, dump_mappings
from ._errors import BootOrderViolation, InvalidRegion
from ._format import TableFormat
from ._memory import MemoryKind, MemoryMap, PhysicalMemory, Region
from ._rights import MemoryType, Rights

# Firmware maps RAM and its own code and data writable and executable, as UEFI does
# before its memory protection runs, and devices strongly ordered.
_FIRMWARE_MEMORY_RIGHTS = Rights(writable=True, executable=True)
_FIRMWARE_DEVICE_RIGHTS = Rights(
    writable=True, executable=False, memory_type=MemoryType.DEVICE_nGnRnE
)
_TABLE_REGION_KINDS = (MemoryKind.RAM, MemoryKind.FIRMWARE_DATA)


class BootStep(enum.Enum):
    FIRMWARE_TABLES = "firmware_tables"
    COPY_FIRMWARE_TABLES = "copy_firmware_tables"
    REPROCESS_TABLES = "reprocess_tables"
    INSTALL_FINAL_TABLES = "install_final_tables"


@dataclass(frozen=True)
class BootStepRecord:
    step: BootStep
    table_format: str
    source_root_address: int | None
    root_address: int
    region_name: str
    region_base: int
    region_size_bytes: int
    table_pages: int
    mapped_range_count: int

    @property
    def table_bytes(self) -> int:
        return self.table_pages * 4096

    def as_event(self) -> dict[str, object]:
        """Return the record as a flat dict for structlog and the event stream."""
        return {
            "step": self.step.value,
            "table_format": self.table_format,
            "source_root_address": self.source_root_address,
            "root_address": self.root_address,
            "region_name": self.region_name,
            "region_base": self.region_base,
            "region_size_bytes": self.region_size_bytes,
            "table_pages": self.table_pages,
            "table_bytes": self.table_bytes,
            "mapped_range_count": self.mapped_range_count,
        }


class Firmware:
    """Emulated firmware that owns identity-mapped tables until it is quiesced."""

    def __init__(
        self, memory: PhysicalMemory, table_format: TableFormat, root_address: int,
        record: BootStepRecord,
    ) -> None:
        self.memory = memory
        self.table_format = table_format
        self.root_address = root_address
        self.record = record
        self.running = True

    def quiesce(self) -> None:
        """Stop the firmware; its tables may no longer be read as live state after this."""
        self.running = False


def run_firmware(
    memory: PhysicalMemory, memory_map: MemoryMap, table_format: TableFormat, table_region: Region
) -> Firmware:
    """Build the firmware's identity map of every non-hole region in ``table_region``."""
    allocator = _allocator_in(memory, memory_map, table_region)
    builder = TableBuilder(memory, table_format, allocator, allow_writable_executable=True)
    for region in memory_map.mapped_regions():
        rights = (
            _FIRMWARE_DEVICE_RIGHTS if region.kind is MemoryKind.DEVICE else _FIRMWARE_MEMORY_RIGHTS
        )
        builder.map_range(region.base, region.base, region.size_bytes, rights,
                          region_name=region.name)
    record = _record(BootStep.FIRMWARE_TABLES, memory, table_format, None, builder.root_address,
                     table_region, allocator)
    return Firmware(memory, table_format, builder.root_address, record)


def copy_firmware_tables(firmware: Firmware, memory_map: MemoryMap, staging_region: Region) -> BootStepRecord:
    """Step 1: copy the firmware's tables into ``staging_region`` while the firmware runs."""
    step = BootStep.COPY_FIRMWARE_TABLES
    if not firmware.running:
        raise BootOrderViolation(step.value, "the firmware is quiesced and its tables are stale")
    memory = firmware.memory
    allocator = _allocator_in(memory, memory_map, staging_region)
    root = copy_tables(memory, firmware.table_format, firmware.root_address, allocator)
    return _record(step, memory, firmware.table_format, firmware.root_address, root,
                   staging_region, allocator)


def reprocess_tables(
    memory: PhysicalMemory,
    memory_map: MemoryMap,
    source_format: TableFormat,
    source_root: int,
    hypervisor_format: TableFormat,
    work_region: Region,
) -> BootStepRecord:
    """Step 2: rebuild the copied tables into the hypervisor's tables in ``work_region``.

    Every range the copy maps keeps its identity mapping, with the rights of the memory-map
    region it falls in: code read-only and executable, data writable and never executable,
    devices Device-nGnRE and never executable. Holes and addresses outside the map are
    left unmapped, and block entries are used wherever alignment allows.
    """
    allocator = _allocator_in(memory, memory_map, work_region)
    builder = TableBuilder(memory, hypervisor_format, allocator)
    for mapped in dump_mappings(memory, source_format, source_root):
        for region, start, end in _split_by_region(memory_map, mapped):
            rights = region.hypervisor_rights()
            if rights is None:
                continue
            output_start = mapped.output_start + (start - mapped.start)
            builder.map_range(start, output_start, end - start, rights, region_name=region.name)
    return _record(BootStep.REPROCESS_TABLES, memory, hypervisor_format, source_root,
                   builder.root_address, work_region, allocator)


def install_final_tables(
    firmware: Firmware,
    memory_map: MemoryMap,
    hypervisor_format: TableFormat,
    source_root: int,
    final_region: Region,
) -> BootStepRecord:
    """Step 3: copy the hypervisor's tables into ``final_region`` once the firmware is quiesced.

    The record's ``root_address`` is the root to hand to the kernel stage.
    """
    step = BootStep.INSTALL_FINAL_TABLES
    if firmware.running:
        raise BootOrderViolation(step.value, "the firmware still runs; quiesce it first")
    memory = firmware.memory
    allocator = _allocator_in(memory, memory_map, final_region)
    root = copy_tables(memory, hypervisor_format, source_root, allocator)
    return _record(step, memory, hypervisor_format, source_root, root, final_region, allocator)


@dataclass(frozen=True)
class BootLayout:
    """Regions the firmware and the boot loader put their tables in."""

    firmware_tables: Region
    staging: Region
    work: Region
    final: Region


@dataclass(frozen=True)
class BootResult:
    records: tuple[BootStepRecord, ...]
    root_address: int
    table_format: TableFormat


def boot_host_tables(
    memory: PhysicalMemory, memory_map: MemoryMap, table_format: TableFormat, layout: BootLayout
) -> BootResult:
    """Run the firmware stage, the three loader steps and the quiesce between them."""
    firmware = run_firmware(memory, memory_map, table_format, layout.firmware_tables)
    copied = copy_firmware_tables(firmware, memory_map, layout.staging)
    rebuilt = reprocess_tables(memory, memory_map, table_format, copied.root_address,
                               table_format, layout.work)
    firmware.quiesce()
    final = install_final_tables(firmware, memory_map, table_format, rebuilt.root_address,
                                 layout.final)
    records = (firmware.record, copied, rebuilt, final)
    return BootResult(records, final.root_address, table_format)


def _split_by_region(
    memory_map: MemoryMap, mapped: MappedRange
) -> list[tuple[Region, int, int]]:
    pieces = []
    for region in memory_map.regions:
        start = max(region.base, mapped.start)
        end = min(region.end, mapped.end)
        if start < end:
            pieces.append((region, start, end))
    return pieces


def _allocator_in(memory: PhysicalMemory, memory_map: MemoryMap, region: Region) -> TableAllocator:
    containing = memory_map.region_at(region.base)
    if (
        containing is None
        or containing.kind not in _TABLE_REGION_KINDS
        or region.end > containing.end
    ):
        raise InvalidRegion(
            region.name,
            f"table region {region.base:#x}-{region.end:#x} must lie inside one RAM or "
            "firmware data region of the memory map",
        )
    return TableAllocator(memory, region.name, region.base, region.size_bytes)


def _record(
    step: BootStep, memory: PhysicalMemory, table_format: TableFormat, source_root: int | None,
    root: int, region: Region, allocator: TableAllocator,
) -> BootStepRecord:
    return BootStepRecord(
        step=step,
        table_format=table_format.name,
        source_root_address=source_root,
        root_address=root,
        region_name=region.name,
        region_base=region.base,
        region_size_bytes=region.size_bytes,
        table_pages=allocator.pages_used,
        mapped_range_count=len(dump_mappings(memory, table_format, root)),
    )
