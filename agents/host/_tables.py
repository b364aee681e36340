"""Page tables of one host boot: the boot-time tables and every VM's stage-2 tables.

A HostTables object lives from a successful boot to the next power-off. It owns the
host's emulated physical memory, which stays sparse: only table pages are written, and
VM memory keeps living in the VM objects, so a VM's host frames are addresses that its
stage-2 tables point at.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import proto

from ..pagetables import (
    PAGE_SIZE_BYTES,
    BootOrderViolation,
    BootResult,
    BootStepRecord,
    GuestMemoryRange,
    InvalidRegion,
    MappedRange,
    PageTableError,
    PhysicalMemory,
    Stage2Tables,
    TableAllocator,
    TableRegionExhausted,
    boot_host_tables,
    build_stage2_tables,
    dump_mappings,
    find_writable_executable,
    table_format,
)
from ._host_memory import (
    FRAMES_PER_2MIB,
    FramePool,
    FramesExhausted,
    HostLayout,
    build_host_layout,
    stage2_table_pages_bound,
)

_PAGE_SHIFT = 12
TABLE_CHECK = "page-tables"


class TableBootFailed(Exception):
    """Building the boot-time tables failed, so the host must not enter service.

    The fields are those of a ``host.boot_failed`` event: ``path`` (sent as ``file``)
    names the memory-map or table region at fault, or ``cluster.json`` for an
    unsupported architecture.
    """

    def __init__(self, path: str, check: str, reason: str) -> None:
        self.path = path
        self.check = check
        self.reason = reason
        super().__init__(f"{path}: {check} check failed: {reason}")


class Stage2Rejected(Exception):
    """A VM's stage-2 tables cannot be built or found here; the VM cannot run on this host."""

    def __init__(self, vm: str, reason: str) -> None:
        self.vm = vm
        self.reason = reason
        super().__init__(f"stage-2 tables of VM {vm}: {reason}")


@dataclass
class VmStage2:
    """One VM's stage-2 tables and the host frames and table pages they hold."""

    vm: str
    tables: Stage2Tables
    guest_address: int
    size_bytes: int
    frame_runs: list[tuple[int, int]]  # host frames backing guest RAM: (first frame, count)
    table_run: tuple[int, int]  # table pages kept after the build: (first frame, count)


@dataclass(frozen=True)
class TableDump:
    """Merged ranges of one table tree, as the dump command returns them."""

    host: str
    arch: str
    table_format: str
    stage: int
    vm: str
    root_address: int
    ranges: tuple[MappedRange, ...]

    def to_result(self) -> dict[str, Any]:
        """Return the dump as a reply result: structured ranges and their ptdump lines."""
        # NOTE: a range takes about 250 bytes of the reply, so a VM whose frames are split
        # into more than about 4,000 runs would exceed the broker's 1 MiB payload limit and
        # its dump would fail. Frames are taken as one run whenever the pool allows it.
        return {
            "host": self.host,
            "arch": self.arch,
            "table_format": self.table_format,
            "stage": self.stage,
            "vm": self.vm,
            "root_address": self.root_address,
            "ranges": [_range_fields(mapped) for mapped in self.ranges],
            "lines": [mapped.format_line() for mapped in self.ranges],
            "writable_executable_count": len(find_writable_executable(list(self.ranges))),
        }


def _range_fields(mapped: MappedRange) -> dict[str, Any]:
    rights = mapped.rights
    return {
        "start": mapped.start,
        "end": mapped.end,
        "output_start": mapped.output_start,
        "readable": rights.readable,
        "writable": rights.writable,
        "executable": rights.executable,
        "user": rights.user,
        "memory_type": rights.memory_type.value,
        "rights": rights.describe().strip(),
    }


class HostTables:
    """The tables of one host boot: build them with ``HostTables.boot``."""

    def __init__(self, host_id: str, layout: HostLayout, memory: PhysicalMemory,
                 boot: BootResult) -> None:
        self.host_id = host_id
        self.layout = layout
        self.memory = memory
        self.boot_result = boot
        self.stage2_format = table_format(layout.architecture, 2)
        self._vm_frames = FramePool(layout.vm_ram)
        self._table_frames = FramePool(layout.stage2_tables)
        self._vms: dict[str, VmStage2] = {}

    @classmethod
    def boot(cls, host_id: str, arch: str, vm_ram_bytes: int) -> "HostTables":
        """Build the host's memory, run the firmware stage and the boot loader's three steps.

        Raises TableBootFailed naming the memory-map or table region at fault.
        """
        try:
            layout = build_host_layout(arch, vm_ram_bytes)
        except PageTableError as exc:
            raise _boot_failure(exc) from None
        except ValueError as exc:
            raise TableBootFailed("cluster.json", "architecture", str(exc)) from None
        memory = PhysicalMemory(layout.memory_size_bytes)
        try:
            result = boot_host_tables(memory, layout.memory_map,
                                      table_format(layout.architecture), layout.boot_layout)
        except PageTableError as exc:
            raise _boot_failure(exc) from None
        return cls(host_id, layout, memory, result)

    @property
    def arch(self) -> str:
        return self.layout.architecture.value

    @property
    def root_address(self) -> int:
        """Root of the hypervisor's tables, handed to the kernel stage."""
        return self.boot_result.root_address

    def step_events(self, boot_count: int) -> list[proto.HostPagetableStep]:
        """Return one event per boot step, in the order the steps ran."""
        return [self._step_event(record, boot_count) for record in self.boot_result.records]

    def _step_event(self, record: BootStepRecord, boot_count: int) -> proto.HostPagetableStep:
        fields = record.as_event()
        ranges = dump_mappings(self.memory, self.boot_result.table_format, record.root_address)
        return proto.HostPagetableStep(
            host=self.host_id, boot_count=boot_count, arch=self.arch,
            writable_executable_range_count=len(find_writable_executable(ranges)),
            **fields,
        )

    # ---- VM stage-2 tables ----------------------------------------------------

    def map_vm(self, vm: str, memory_bytes: int) -> VmStage2:
        """Give ``vm`` host frames for ``memory_bytes`` of guest RAM and build its stage-2 tables.

        Raises Stage2Rejected when the VM already has tables here or the frames or table
        pages run out; nothing stays allocated then.
        """
        if vm in self._vms:
            raise Stage2Rejected(vm, f"already mapped on host {self.host_id}")
        if memory_bytes <= 0 or memory_bytes % PAGE_SIZE_BYTES:
            raise Stage2Rejected(vm, f"memory size {memory_bytes} is not a positive multiple of 4 KiB")
        page_count = memory_bytes // PAGE_SIZE_BYTES
        guest_page = self.layout.guest_ram_address >> _PAGE_SHIFT
        with ExitStack() as undo:
            try:
                # 2 MiB-aligned frames let the tables use block entries.
                runs = self._vm_frames.allocate(page_count, align_frames=FRAMES_PER_2MIB)
                undo.callback(self._release_frames, runs)
                reserved = stage2_table_pages_bound(guest_page, page_count)
                table_first = self._table_frames.allocate_run(reserved)
                undo.callback(self._table_frames.release, table_first, reserved)
                tables = self._build_stage2(vm, guest_page, runs, table_first, reserved)
            except FramesExhausted as exc:
                raise Stage2Rejected(vm, str(exc)) from None
            except PageTableError as exc:
                raise Stage2Rejected(vm, f"table build failed: {exc}") from None
            undo.pop_all()
        # The bound covers the worst case; the pages the build did not use go back.
        self._table_frames.release(table_first + tables.table_pages, reserved - tables.table_pages)
        mapping = VmStage2(vm, tables, self.layout.guest_ram_address, memory_bytes, runs,
                           (table_first, tables.table_pages))
        self._vms[vm] = mapping
        return mapping

    def _build_stage2(self, vm: str, guest_page: int, runs: list[tuple[int, int]],
                      table_first: int, reserved: int) -> Stage2Tables:
        allocator = TableAllocator(self.memory, f"stage-2 tables of {vm}",
                                   table_first << _PAGE_SHIFT, reserved << _PAGE_SHIFT)
        mappings = []
        for first_frame, count in runs:
            mappings.append(GuestMemoryRange(guest_page, first_frame, count))
            guest_page += count
        return build_stage2_tables(self.memory, self.stage2_format, mappings, allocator)

    def unmap_vm(self, vm: str) -> bool:
        """Return a VM's frames and table pages to the pools; False if it had none here."""
        mapping = self._vms.pop(vm, None)
        if mapping is None:
            return False
        self._release_frames(mapping.frame_runs)
        self._table_frames.release(*mapping.table_run)
        return True

    def _release_frames(self, runs: list[tuple[int, int]]) -> None:
        for first_frame, count in runs:
            self._vm_frames.release(first_frame, count)

    def vm_mapping(self, vm: str) -> VmStage2:
        mapping = self._vms.get(vm)
        if mapping is None:
            raise Stage2Rejected(vm, f"no stage-2 tables on host {self.host_id}; the VM does not run here")
        return mapping

    def host_frame(self, vm: str, guest_page: int) -> int:
        """Return the host frame backing guest page ``guest_page`` of ``vm``, by a table walk."""
        return self.vm_mapping(vm).tables.host_frame(guest_page)

    @property
    def mapped_vms(self) -> list[str]:
        return sorted(self._vms)

    @property
    def free_vm_frames(self) -> int:
        return self._vm_frames.free_frame_count

    @property
    def free_table_frames(self) -> int:
        return self._table_frames.free_frame_count

    # ---- dumps ------------------------------------------------------------------

    def dump(self, vm: str = "") -> TableDump:
        """Dump the hypervisor's tables, or the stage-2 tables of ``vm`` when it is set."""
        if not vm:
            table_fmt = self.boot_result.table_format
            return TableDump(self.host_id, self.arch, table_fmt.name, 1, "", self.root_address,
                             tuple(dump_mappings(self.memory, table_fmt, self.root_address)))
        tables = self.vm_mapping(vm).tables
        return TableDump(self.host_id, self.arch, tables.table_format.name, 2, vm,
                         tables.root_address, tuple(tables.dump()))


def _boot_failure(exc: PageTableError) -> TableBootFailed:
    if isinstance(exc, (InvalidRegion, TableRegionExhausted)):
        return TableBootFailed(exc.region_name, TABLE_CHECK, str(exc))
    if isinstance(exc, BootOrderViolation):
        return TableBootFailed(exc.step, TABLE_CHECK, str(exc))
    return TableBootFailed("page tables", TABLE_CHECK, str(exc))
