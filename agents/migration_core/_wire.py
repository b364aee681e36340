"""Binary batches of page records, the payload of one bus message.

Layout, big-endian:

    batch header  magic b"DCPR" | version u8 | flags u8 (0) | record count u32
    record        kind u8 | guest page u64 | 4096 data bytes for DATA only

Kinds are PageKind values: 1 DATA, 2 ZERO, 3 ERROR. An ERROR record
carries no bytes because the page's contents are lost on the source.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from ._guest import PageKind
from ._memory import PAGE_SIZE_BYTES

MAGIC = b"DCPR"
WIRE_VERSION = 1

BATCH_HEADER = struct.Struct(">4sBBI")
RECORD_HEADER = struct.Struct(">BQ")
HEADER_SIZE_BYTES = BATCH_HEADER.size
RECORD_HEADER_SIZE_BYTES = RECORD_HEADER.size
DATA_RECORD_SIZE_BYTES = RECORD_HEADER.size + PAGE_SIZE_BYTES
_MAX_GUEST_PAGE = (1 << 64) - 1
_KINDS = {int(kind): kind for kind in PageKind}


class MalformedPageBatch(ValueError):
    """A page batch that does not decode; the sender is broken, so drop the migration."""

    def __init__(self, reason: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(f"malformed page batch at byte {offset}: {reason}")


class PageRecord(NamedTuple):
    kind: PageKind
    guest_page: int
    # The page's bytes for DATA, None for ZERO and ERROR.
    data: bytes | memoryview | None = None


def encode_batch(records: Iterable[PageRecord]) -> bytes:
    """Encode page records into one batch; checks each record."""
    parts: list[bytes | memoryview] = [b""]
    count = 0
    pack = RECORD_HEADER.pack
    for kind, guest_page, data in records:
        if not isinstance(kind, PageKind):
            raise ValueError(f"invalid record kind {kind!r}: expected a PageKind")
        if type(guest_page) is not int or not 0 <= guest_page <= _MAX_GUEST_PAGE:
            raise ValueError(f"invalid guest page {guest_page!r}: expected an int in 0..2**64-1")
        if kind is PageKind.DATA:
            if data is None or len(data) != PAGE_SIZE_BYTES:
                size = None if data is None else len(data)
                raise ValueError(f"invalid DATA record for page {guest_page}: {size} bytes, expected {PAGE_SIZE_BYTES}")
            parts.append(pack(kind, guest_page))
            parts.append(data)
        else:
            if data is not None:
                raise ValueError(f"invalid {kind.name} record for page {guest_page}: it must carry no data")
            parts.append(pack(kind, guest_page))
        count += 1
    parts[0] = BATCH_HEADER.pack(MAGIC, WIRE_VERSION, 0, count)
    return b"".join(parts)


def _decode_header(view: memoryview) -> int:
    if len(view) < HEADER_SIZE_BYTES:
        raise MalformedPageBatch(f"{len(view)} bytes is shorter than the {HEADER_SIZE_BYTES}-byte header", 0)
    magic, version, flags, count = BATCH_HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise MalformedPageBatch(f"magic {bytes(magic)!r} is not {MAGIC!r}", 0)
    if version != WIRE_VERSION:
        raise MalformedPageBatch(f"unsupported version {version}, expected {WIRE_VERSION}", 4)
    if flags != 0:
        raise MalformedPageBatch(f"flags {flags:#04x} must be 0", 5)
    # Every record takes at least a record header, so a larger count cannot be honest.
    max_count = (len(view) - HEADER_SIZE_BYTES) // RECORD_HEADER_SIZE_BYTES
    if count > max_count:
        raise MalformedPageBatch(f"record count {count} does not fit in {len(view)} bytes", 6)
    return count


def decode_batch(payload: bytes | bytearray | memoryview) -> list[PageRecord]:
    """Decode a whole batch, or raise MalformedPageBatch naming the first bad byte.

    DATA records are memoryviews into `payload`; copy them to keep them.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MalformedPageBatch(f"payload is {type(payload).__name__}, expected bytes", 0)
    view = memoryview(payload).cast("B")
    count = _decode_header(view)
    records: list[PageRecord] = []
    offset = HEADER_SIZE_BYTES
    end = len(view)
    unpack = RECORD_HEADER.unpack_from
    for index in range(count):
        if end - offset < RECORD_HEADER_SIZE_BYTES:
            raise MalformedPageBatch(f"record {index} of {count} is truncated", offset)
        kind_value, guest_page = unpack(view, offset)
        kind = _KINDS.get(kind_value)
        if kind is None:
            raise MalformedPageBatch(f"record {index} has unknown kind {kind_value}", offset)
        offset += RECORD_HEADER_SIZE_BYTES
        if kind is PageKind.DATA:
            if end - offset < PAGE_SIZE_BYTES:
                raise MalformedPageBatch(
                    f"DATA record {index} for page {guest_page} has {end - offset} of {PAGE_SIZE_BYTES} bytes", offset
                )
            records.append(PageRecord(kind, guest_page, view[offset:offset + PAGE_SIZE_BYTES]))
            offset += PAGE_SIZE_BYTES
        else:
            records.append(PageRecord(kind, guest_page, None))
    if offset != end:
        raise MalformedPageBatch(f"{end - offset} bytes after the last of {count} records", offset)
    return records
