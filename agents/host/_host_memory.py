"""A host's physical memory map, built from its configuration, and pools of free frames.

AArch64 hosts follow QEMU's `virt` board loosely: flash at 0, GIC, UART and PCIe below
1 GiB, RAM from 0x4000_0000. x86-64 hosts follow a PC: legacy regions below 1 MiB, PCIe
and the local APIC below 4 GiB, firmware flash ending at 4 GiB, large RAM above 4 GiB.
The hypervisor's own RAM comes first, then a pool for VM stage-2 table pages, then the RAM
VMs get frames from, whose size is the host's configured memory.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..pagetables import (
    CODE_RIGHTS,
    PAGE_SIZE_BYTES,
    Architecture,
    BootLayout,
    InvalidRegion,
    MemoryKind,
    MemoryMap,
    Region,
    table_format,
)

MIB = 1 << 20
GIB = 1 << 30
_PAGE_SHIFT = 12
FRAMES_PER_2MIB = 512

VM_RAM = "vm-ram"
STAGE2_TABLES = "stage2-tables"
FIRMWARE_DATA = "firmware-data"
HYPERVISOR_DATA = "hypervisor-data"

_AARCH64_FIXED = (
    Region("flash", MemoryKind.FIRMWARE_CODE, 0x0000_0000, 64 * MIB),
    Region("unassigned-low", MemoryKind.HOLE, 0x0400_0000, 64 * MIB),
    Region("gic", MemoryKind.DEVICE, 0x0800_0000, 16 * MIB),
    Region("uart", MemoryKind.DEVICE, 0x0900_0000, PAGE_SIZE_BYTES),
    Region("rtc", MemoryKind.DEVICE, 0x0901_0000, PAGE_SIZE_BYTES),
    Region("pcie-mmio", MemoryKind.DEVICE, 0x1000_0000, 0x2EFF_0000),
    Region("pcie-ecam", MemoryKind.DEVICE, 0x3F00_0000, 16 * MIB),
)
_AARCH64_RAM_BASE = 0x4000_0000

_X86_64_FIXED = (
    Region("low-ram", MemoryKind.RAM, 0x0, 0x9_F000),
    Region("ebda", MemoryKind.FIRMWARE_DATA, 0x9_F000, PAGE_SIZE_BYTES),
    Region("vga", MemoryKind.DEVICE, 0xA_0000, 0x2_0000),
    Region("bios-shadow", MemoryKind.FIRMWARE_CODE, 0xC_0000, 0x4_0000),
    Region(FIRMWARE_DATA, MemoryKind.FIRMWARE_DATA, 0x10_0000, 3 * MIB),
    Region("pcie-mmio", MemoryKind.DEVICE, 0xC000_0000, 0x2000_0000),
    Region("pcie-ecam", MemoryKind.DEVICE, 0xE000_0000, 0x1000_0000),
    Region("reserved", MemoryKind.HOLE, 0xF000_0000, 0x0EC0_0000),
    Region("ioapic", MemoryKind.DEVICE, 0xFEC0_0000, PAGE_SIZE_BYTES),
    Region("hpet", MemoryKind.DEVICE, 0xFED0_0000, PAGE_SIZE_BYTES),
    Region("lapic", MemoryKind.DEVICE, 0xFEE0_0000, PAGE_SIZE_BYTES),
    Region("flash", MemoryKind.FIRMWARE_CODE, 0xFFC0_0000, 4 * MIB),
)
_X86_64_HYPERVISOR_BASE = 0x40_0000
_X86_64_HIGH_RAM_BASE = 4 * GIB

# Guest-physical address of a VM's RAM: QEMU `virt` puts it at 1 GiB, a PC at 0.
_GUEST_RAM_ADDRESS = {Architecture.AARCH64: 0x4000_0000, Architecture.X86_64: 0}

# Stage-2 table pool: one 4 KiB level-3 table maps 2 MiB, so 1/512 of the VM RAM covers the
# level-3 tables of RAM mapped entirely with pages. The 4 MiB more covers 4 further pages
# per VM (root, level 1, level 2 and a partly used level-3 table) for 256 VMs.
_STAGE2_POOL_FIXED_BYTES = 4 * MIB
_TABLE_STEP_BYTES = MIB  # each boot step's table region


@dataclass(frozen=True)
class HostLayout:
    """Memory map of one host, where the boot steps put their tables, and the VM pools."""

    architecture: Architecture
    memory_map: MemoryMap
    boot_layout: BootLayout
    stage2_tables: Region
    vm_ram: Region
    guest_ram_address: int

    @property
    def memory_size_bytes(self) -> int:
        return self.memory_map.regions[-1].end


def build_host_layout(arch: str, vm_ram_bytes: int) -> HostLayout:
    """Lay out a host of architecture ``arch`` whose VMs may use ``vm_ram_bytes`` of RAM.

    Raises ValueError for an unknown architecture and InvalidRegion (or a subclass) naming
    the region for a size that is not a positive multiple of 4 KiB or ends beyond the
    architecture's output address size.
    """
    architecture = Architecture.parse(arch)
    if isinstance(vm_ram_bytes, bool) or not isinstance(vm_ram_bytes, int) or vm_ram_bytes <= 0:
        raise InvalidRegion(VM_RAM, f"size {vm_ram_bytes!r} is not a positive number of bytes")
    pool_bytes = _round_up(vm_ram_bytes // FRAMES_PER_2MIB + _STAGE2_POOL_FIXED_BYTES, 2 * MIB)
    if architecture is Architecture.AARCH64:
        regions = list(_AARCH64_FIXED)
        regions += _carve(_AARCH64_RAM_BASE, [
            (FIRMWARE_DATA, MemoryKind.FIRMWARE_DATA, 2 * MIB),
            ("hypervisor-text", MemoryKind.RAM, 2 * MIB),
            (HYPERVISOR_DATA, MemoryKind.RAM, 4 * MIB),
            (STAGE2_TABLES, MemoryKind.RAM, pool_bytes),
            (VM_RAM, MemoryKind.RAM, vm_ram_bytes),
        ])
    else:
        regions = list(_X86_64_FIXED)
        regions += _carve(_X86_64_HYPERVISOR_BASE, [
            ("hypervisor-text", MemoryKind.RAM, 2 * MIB),
            (HYPERVISOR_DATA, MemoryKind.RAM, 4 * MIB),
        ])
        regions += _carve(_X86_64_HIGH_RAM_BASE, [
            (STAGE2_TABLES, MemoryKind.RAM, pool_bytes),
            (VM_RAM, MemoryKind.RAM, vm_ram_bytes),
        ])
    output_limit = table_format(architecture).output_limit_bytes
    memory_map = MemoryMap(regions, output_limit_bytes=output_limit)
    return HostLayout(
        architecture=architecture,
        memory_map=memory_map,
        boot_layout=_boot_layout(memory_map),
        stage2_tables=memory_map.region_named(STAGE2_TABLES),
        vm_ram=memory_map.region_named(VM_RAM),
        guest_ram_address=_GUEST_RAM_ADDRESS[architecture],
    )


def _carve(base: int, pieces: list[tuple[str, MemoryKind, int]]) -> list[Region]:
    regions = []
    for name, kind, size_bytes in pieces:
        # The hypervisor's code is the only RAM mapped executable (and read-only).
        rights = CODE_RIGHTS if name == "hypervisor-text" else None
        regions.append(Region(name, kind, base, size_bytes, rights))
        base += size_bytes
    return regions


def _boot_layout(memory_map: MemoryMap) -> BootLayout:
    firmware = memory_map.region_named(FIRMWARE_DATA)
    data = memory_map.region_named(HYPERVISOR_DATA)
    return BootLayout(
        firmware_tables=Region("firmware-tables", MemoryKind.FIRMWARE_DATA,
                               firmware.end - _TABLE_STEP_BYTES, _TABLE_STEP_BYTES),
        staging=Region("boot-staging-tables", MemoryKind.RAM, data.base, _TABLE_STEP_BYTES),
        work=Region("boot-work-tables", MemoryKind.RAM, data.base + _TABLE_STEP_BYTES,
                    _TABLE_STEP_BYTES),
        final=Region("hypervisor-tables", MemoryKind.RAM, data.base + 2 * _TABLE_STEP_BYTES,
                     _TABLE_STEP_BYTES),
    )


def _round_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def stage2_table_pages_bound(guest_page: int, page_count: int) -> int:
    """Return the most table pages a stage-2 tree mapping contiguous guest pages can need.

    One root, and below it one table per level-1, level-2 and level-3 window (512 GiB,
    1 GiB and 2 MiB of guest-physical space) that the guest range touches.
    """
    last_page = guest_page + page_count - 1
    pages = 1
    for window_shift in (27, 18, 9):  # log2 of the guest pages one table at that level maps
        pages += (last_page >> window_shift) - (guest_page >> window_shift) + 1
    return pages


class FramesExhausted(Exception):
    """A frame pool cannot satisfy a request; free memory on the host or use another host."""

    def __init__(self, pool_name: str, requested_frames: int, free_frames: int) -> None:
        self.pool_name = pool_name
        self.requested_frames = requested_frames
        self.free_frames = free_frames
        super().__init__(
            f"{pool_name}: {requested_frames} frames requested, {free_frames} free"
            + ("" if requested_frames > free_frames else " but not contiguous")
        )


class FramePool:
    """Free 4 KiB frames of one physical region, kept as sorted, merged runs."""

    def __init__(self, region: Region) -> None:
        self.name = region.name
        self.first_frame = region.base >> _PAGE_SHIFT
        self.total_frames = region.size_bytes >> _PAGE_SHIFT
        # Parallel lists: run starts (sorted) and run lengths, in frames.
        self._starts: list[int] = [self.first_frame]
        self._counts: list[int] = [self.total_frames]

    @property
    def free_frame_count(self) -> int:
        return sum(self._counts)

    def free_runs(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._counts))

    def allocate_run(self, count: int, *, align_frames: int = 1) -> int:
        """Take ``count`` contiguous frames starting at a multiple of ``align_frames``."""
        start = self._find(count, align_frames)
        if start is None:
            raise FramesExhausted(self.name, count, self.free_frame_count)
        self._take(start, count)
        return start

    def allocate(self, count: int, *, align_frames: int = 1) -> list[tuple[int, int]]:
        """Take ``count`` frames as (first frame, count) runs, as few as the free list allows.

        One aligned run is preferred, then one run, then the lowest free runs in order.
        """
        for alignment in (align_frames, 1):
            start = self._find(count, alignment)
            if start is not None:
                self._take(start, count)
                return [(start, count)]
        if count > self.free_frame_count:
            raise FramesExhausted(self.name, count, self.free_frame_count)
        runs = []
        remaining = count
        while remaining:
            start, length = self._starts[0], min(self._counts[0], remaining)
            self._take(start, length)
            runs.append((start, length))
            remaining -= length
        return runs

    def release(self, start: int, count: int) -> None:
        """Return ``count`` frames from ``start`` to the pool, merging with neighbouring runs."""
        if count <= 0:
            return
        end = start + count
        if start < self.first_frame or end > self.first_frame + self.total_frames:
            raise ValueError(f"{self.name}: frames {start:#x}+{count} are outside the pool")
        index = bisect.bisect_left(self._starts, start)
        if index > 0 and self._starts[index - 1] + self._counts[index - 1] > start:
            raise ValueError(f"{self.name}: frame {start:#x} is already free")
        if index < len(self._starts) and self._starts[index] < end:
            raise ValueError(f"{self.name}: frame {self._starts[index]:#x} is already free")
        self._starts.insert(index, start)
        self._counts.insert(index, count)
        if index + 1 < len(self._starts) and end == self._starts[index + 1]:
            self._counts[index] += self._counts.pop(index + 1)
            self._starts.pop(index + 1)
        if index > 0 and self._starts[index - 1] + self._counts[index - 1] == start:
            self._counts[index - 1] += self._counts.pop(index)
            self._starts.pop(index)

    def _find(self, count: int, align_frames: int) -> int | None:
        for start, length in zip(self._starts, self._counts):
            aligned = _round_up(start, align_frames)
            if aligned + count <= start + length:
                return aligned
        return None

    def _take(self, start: int, count: int) -> None:
        index = bisect.bisect_right(self._starts, start) - 1
        run_start, run_count = self._starts[index], self._counts[index]
        before = start - run_start
        after = run_start + run_count - (start + count)
        del self._starts[index], self._counts[index]
        if after:
            self._starts.insert(index, start + count)
            self._counts.insert(index, after)
        if before:
            self._starts.insert(index, run_start)
            self._counts.insert(index, before)


ARCH_CHOICES = ("aarch64", "x86_64", "mixed")


def host_arch(choice: str, host_index: int) -> str:
    """Return the architecture of host ``host_index`` for ``dcfleet up --arch choice``.

    ``mixed`` alternates: even indexes (h1, h3, ...) are aarch64, odd ones x86_64.
    """
    if choice == "mixed":
        return "aarch64" if host_index % 2 == 0 else "x86_64"
    if choice not in ARCH_CHOICES:
        raise ValueError(f"architecture {choice!r} is not one of: {', '.join(ARCH_CHOICES)}")
    return choice
