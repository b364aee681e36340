"""Exceptions raised by the page-table library, named for what the caller does next."""

from __future__ import annotations


class PageTableError(Exception):
    """Base class of every error raised by ``agents.pagetables``."""


class InvalidRegion(PageTableError, ValueError):
    """A memory-map region or mapping request is invalid; fix the region and retry."""

    def __init__(self, region_name: str, reason: str) -> None:
        self.region_name = region_name
        self.reason = reason
        super().__init__(f"region {region_name!r} is invalid: {reason}")


class RegionOverlap(InvalidRegion):
    def __init__(self, region_name: str, other_name: str) -> None:
        self.other_name = other_name
        super().__init__(region_name, f"overlaps region {other_name!r}")


class RegionMisaligned(InvalidRegion):
    def __init__(self, region_name: str, address: int, alignment_bytes: int) -> None:
        self.address = address
        self.alignment_bytes = alignment_bytes
        super().__init__(
            region_name,
            f"address or size {address:#x} is not aligned to {alignment_bytes:#x} bytes",
        )


class RegionBeyondOutputSize(InvalidRegion):
    def __init__(self, region_name: str, end_address: int, limit_address: int) -> None:
        self.end_address = end_address
        self.limit_address = limit_address
        super().__init__(
            region_name,
            f"ends at {end_address:#x}, beyond the output address limit {limit_address:#x}",
        )


class WritableExecutableRejected(InvalidRegion):
    def __init__(self, region_name: str) -> None:
        super().__init__(region_name, "requested rights are both writable and executable")


class MappingConflict(InvalidRegion):
    """The input address is already mapped by an earlier request."""

    def __init__(self, region_name: str, input_address: int) -> None:
        self.input_address = input_address
        super().__init__(region_name, f"input address {input_address:#x} is already mapped")


class TableRegionExhausted(PageTableError):
    """The region reserved for table pages is full; give the builder a larger region."""

    def __init__(self, region_name: str, size_bytes: int) -> None:
        self.region_name = region_name
        self.size_bytes = size_bytes
        super().__init__(
            f"table region {region_name!r} of {size_bytes} bytes has no free page left"
        )


class BootOrderViolation(PageTableError):
    """A boot-loader step ran while the firmware was in the wrong state for it."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"boot step {step!r} cannot run: {reason}")


class InputAddressOutOfRange(PageTableError, ValueError):
    def __init__(self, address: int, input_bits: int) -> None:
        self.address = address
        self.input_bits = input_bits
        super().__init__(
            f"input address {address:#x} is outside the {input_bits}-bit input address range"
        )


class GuestPageNotMapped(PageTableError, LookupError):
    """The guest page has no host frame in the VM's stage-2 tables."""

    def __init__(self, guest_page: int) -> None:
        self.guest_page = guest_page
        super().__init__(f"guest page {guest_page:#x} is not mapped in the stage-2 tables")
