"""Emulated physical memory of a host and its memory map."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Iterable

from ._errors import (
    InvalidRegion,
    RegionBeyondOutputSize,
    RegionMisaligned,
    RegionOverlap,
    WritableExecutableRejected,
)
from ._rights import CODE_RIGHTS, DATA_RIGHTS, DEVICE_RIGHTS, Rights

PAGE_SIZE_BYTES = 4096
_PAGE_MASK = PAGE_SIZE_BYTES - 1
_ZERO_FRAME = bytes(PAGE_SIZE_BYTES)


class PhysicalMemory:
    """Sparse physical memory: a 4 KiB frame is allocated on its first write.

    Reads of a frame never written return zeros without allocating it.
    """

    def __init__(self, size_bytes: int) -> None:
        if size_bytes <= 0 or size_bytes & _PAGE_MASK:
            raise ValueError(f"memory size {size_bytes:#x} must be a positive multiple of 4 KiB")
        self.size_bytes = size_bytes
        self._frames: dict[int, bytearray] = {}

    @property
    def allocated_frame_count(self) -> int:
        return len(self._frames)

    def allocated_frames(self) -> list[int]:
        """Return the numbers of the frames allocated so far, in ascending order."""
        return sorted(self._frames)

    def _check_range(self, address: int, length: int) -> None:
        if address < 0 or address + length > self.size_bytes:
            raise ValueError(
                f"physical address range {address:#x}+{length:#x} is outside memory of "
                f"{self.size_bytes:#x} bytes"
            )

    def frame_for_write(self, frame_number: int) -> bytearray:
        self._check_range(frame_number * PAGE_SIZE_BYTES, PAGE_SIZE_BYTES)
        frame = self._frames.get(frame_number)
        if frame is None:
            frame = bytearray(PAGE_SIZE_BYTES)
            self._frames[frame_number] = frame
        return frame

    def read_frame(self, frame_number: int) -> bytes | bytearray:
        self._check_range(frame_number * PAGE_SIZE_BYTES, PAGE_SIZE_BYTES)
        return self._frames.get(frame_number, _ZERO_FRAME)

    def read_u64(self, address: int) -> int:
        if address & 7:
            raise ValueError(f"64-bit read address {address:#x} is not 8-byte aligned")
        self._check_range(address, 8)
        frame = self._frames.get(address >> 12)
        if frame is None:
            return 0
        return struct.unpack_from("<Q", frame, address & _PAGE_MASK)[0]

    def write_u64(self, address: int, value: int) -> None:
        if address & 7:
            raise ValueError(f"64-bit write address {address:#x} is not 8-byte aligned")
        self._check_range(address, 8)
        struct.pack_into("<Q", self.frame_for_write(address >> 12), address & _PAGE_MASK, value)

    def read_bytes(self, address: int, length: int) -> bytes:
        self._check_range(address, length)
        chunks = []
        while length:
            offset = address & _PAGE_MASK
            count = min(length, PAGE_SIZE_BYTES - offset)
            frame = self._frames.get(address >> 12, _ZERO_FRAME)
            chunks.append(bytes(frame[offset : offset + count]))
            address += count
            length -= count
        return b"".join(chunks)

    def write_bytes(self, address: int, data: bytes) -> None:
        self._check_range(address, len(data))
        position = 0
        while position < len(data):
            offset = address & _PAGE_MASK
            count = min(len(data) - position, PAGE_SIZE_BYTES - offset)
            frame = self.frame_for_write(address >> 12)
            frame[offset : offset + count] = data[position : position + count]
            address += count
            position += count


class MemoryKind(enum.Enum):
    RAM = "ram"
    FIRMWARE_CODE = "firmware_code"
    FIRMWARE_DATA = "firmware_data"
    DEVICE = "device"
    HOLE = "hole"


_DEFAULT_RIGHTS = {
    MemoryKind.RAM: DATA_RIGHTS,
    MemoryKind.FIRMWARE_CODE: CODE_RIGHTS,
    MemoryKind.FIRMWARE_DATA: DATA_RIGHTS,
    MemoryKind.DEVICE: DEVICE_RIGHTS,
}


@dataclass(frozen=True)
class Region:
    """A physical address range of the memory map.

    ``rights`` overrides the rights the hypervisor's tables give the kind (for example a
    read-only RAM range); holes are never mapped.
    """

    name: str
    kind: MemoryKind
    base: int
    size_bytes: int
    rights: Rights | None = None

    @property
    def end(self) -> int:
        return self.base + self.size_bytes

    def contains(self, address: int) -> bool:
        return self.base <= address < self.end

    def hypervisor_rights(self) -> Rights | None:
        """Return the rights the hypervisor maps this region with, or None for a hole."""
        if self.kind is MemoryKind.HOLE:
            return None
        return self.rights if self.rights is not None else _DEFAULT_RIGHTS[self.kind]


class MemoryMap:
    """Validated, sorted regions of a host's physical address space."""

    def __init__(self, regions: Iterable[Region], *, output_limit_bytes: int) -> None:
        self.output_limit_bytes = output_limit_bytes
        ordered = sorted(regions, key=lambda region: region.base)
        for region in ordered:
            _check_region(region, output_limit_bytes)
        for previous, current in zip(ordered, ordered[1:]):
            if current.base < previous.end:
                raise RegionOverlap(current.name, previous.name)
        self.regions: tuple[Region, ...] = tuple(ordered)

    def region_at(self, address: int) -> Region | None:
        for region in self.regions:
            if region.contains(address):
                return region
        return None

    def region_named(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(f"memory map has no region named {name!r}")

    def mapped_regions(self) -> list[Region]:
        """Return the regions that are not holes, in address order."""
        return [region for region in self.regions if region.kind is not MemoryKind.HOLE]


def _check_region(region: Region, output_limit_bytes: int) -> None:
    if not region.name:
        raise InvalidRegion(repr(region), "region has no name")
    if region.size_bytes <= 0:
        raise InvalidRegion(region.name, f"size {region.size_bytes:#x} is not positive")
    for value in (region.base, region.size_bytes):
        if value & _PAGE_MASK:
            raise RegionMisaligned(region.name, value, PAGE_SIZE_BYTES)
    if region.base < 0 or region.end > output_limit_bytes:
        raise RegionBeyondOutputSize(region.name, region.end, output_limit_bytes)
    rights = region.rights
    if rights is not None and rights.writable and rights.executable:
        raise WritableExecutableRejected(region.name)
    if rights is not None and region.kind is MemoryKind.HOLE:
        raise InvalidRegion(region.name, "a hole cannot carry access rights")
