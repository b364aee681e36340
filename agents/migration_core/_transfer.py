"""Page batches between guest memory and the wire: the source's encoder and the destination's apply."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ._guest import GuestMemory, PageKind
from ._memory import GuestPageOutOfRange
from ._wire import BATCH_HEADER, MAGIC, RECORD_HEADER, WIRE_VERSION, PageRecord, decode_batch

# 64 data records are 262,720 bytes, well under nats-server's default 1 MiB max_payload.
DEFAULT_RECORDS_PER_BATCH = 64

@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One batch ready to send, with what it contains."""

    payload: bytes
    normal_pages: int
    zero_pages: int
    # Guest pages sent as ERROR records, and those among them whose error this read discovered.
    error_pages: tuple[int, ...]
    discovered_error_pages: tuple[int, ...]


def encode_pages(
    memory: GuestMemory,
    guest_pages: Iterable[int],
    *,
    records_per_batch: int = DEFAULT_RECORDS_PER_BATCH,
) -> Iterator[EncodedBatch]:
    """Read pages error-safely and yield them as wire batches of at most `records_per_batch` records."""
    if type(records_per_batch) is not int or records_per_batch <= 0:
        raise ValueError(f"invalid records_per_batch {records_per_batch!r}: expected a positive int")
    batch: list[int] = []
    for page in guest_pages:
        memory.check_page(page)
        batch.append(page)
        if len(batch) == records_per_batch:
            yield _encode_one(memory, batch)
            batch = []
    if batch:
        yield _encode_one(memory, batch)


def _encode_one(memory: GuestMemory, guest_pages: list[int]) -> EncodedBatch:
    # Builds the wire layout of encode_batch directly: this loop is the data path.
    parts: list[bytes | memoryview] = [b""]
    normal = zero = 0
    errors: list[int] = []
    discovered: list[int] = []
    pack = RECORD_HEADER.pack
    for page in guest_pages:
        read = memory.read_for_migration(page)
        parts.append(pack(read.kind, page))
        if read.kind is PageKind.DATA:
            parts.append(read.data)  # type: ignore[arg-type]
            normal += 1
        elif read.kind is PageKind.ZERO:
            zero += 1
        else:
            errors.append(page)
            if read.discovered_error:
                discovered.append(page)
    parts[0] = BATCH_HEADER.pack(MAGIC, WIRE_VERSION, 0, len(guest_pages))
    return EncodedBatch(b"".join(parts), normal, zero, tuple(errors), tuple(discovered))


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    normal_pages: int
    zero_pages: int
    error_pages: tuple[int, ...]


def apply_batch(memory: GuestMemory, payload: bytes | bytearray | memoryview) -> AppliedBatch:
    """Decode a batch and store its pages; a bad batch changes nothing.

    Raises MalformedPageBatch for bytes that do not decode and
    GuestPageOutOfRange for a page beyond the VM's memory, before any page
    is stored.
    """
    records = decode_batch(payload)
    page_count = memory.page_count
    for record in records:
        if record.guest_page >= page_count:
            raise GuestPageOutOfRange(memory.vm_id, record.guest_page, page_count)
    return _store_records(memory, records)


def _store_records(memory: GuestMemory, records: list[PageRecord]) -> AppliedBatch:
    normal = zero = 0
    errors: list[int] = []
    for kind, page, data in records:
        if kind is PageKind.DATA:
            memory.store_page(page, data)  # type: ignore[arg-type]
            normal += 1
        elif kind is PageKind.ZERO:
            memory.store_zero(page)
            zero += 1
        else:
            memory.poison_page(page)
            errors.append(page)
    return AppliedBatch(normal, zero, tuple(errors))
