"""Binary batches of page records, the payload of one bus message.

Layout, big-endian:

    batch header  magic b"DCPR" | version u8 | flags u8 (0) | record count u32
    record        kind u8 | guest page u64 | 4096 data bytes for DATA only

Kinds are PageKind values: 1 DATA, 2 ZERO, 3 ERROR. An ERROR record
carries no bytes because the page's contents are lost on the source.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
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
_DATA, _ZERO, _ERROR = int(PageKind.DATA), int(PageKind.ZERO), int(PageKind.ERROR)


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
    kinds, pages, contents = decode_columns(payload)
    return [PageRecord(_KINDS[kind], page, data) for kind, page, data in zip(kinds, pages, contents)]


def decode_columns(
    payload: bytes | bytearray | memoryview,
) -> tuple[Sequence[int], Sequence[int], list[memoryview | None]]:
    """Decode a whole batch into record kinds (ints), guest pages and contents (None unless DATA).

    The same checks and errors as decode_batch, without a PageRecord per page.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MalformedPageBatch(f"payload is {type(payload).__name__}, expected bytes", 0)
    view = memoryview(payload).cast("B")
    count = _decode_header(view)
    columns = _decode_data_first(view, count)
    return columns if columns is not None else _decode_each(view, count)


def _decode_data_first(view: memoryview, count: int) -> tuple[tuple[int, ...], tuple[int, ...], list] | None:
    """Decode a batch whose DATA records all come first (as encode_pages writes them) in one unpack.

    Returns None for any other batch, which the record-by-record decoder then
    checks; the size alone gives the number of DATA records.
    """
    data_bytes = len(view) - HEADER_SIZE_BYTES - count * RECORD_HEADER_SIZE_BYTES
    data_count, rest = divmod(data_bytes, PAGE_SIZE_BYTES)
    if data_bytes < 0 or rest or data_count > count:
        return None
    fields = _data_first_layout(data_count, count - data_count).unpack_from(view, HEADER_SIZE_BYTES)
    kinds, pages = fields[0::2], fields[1::2]
    if kinds[:data_count].count(_DATA) != data_count:
        return None
    others = kinds[data_count:]
    if others.count(_ZERO) + others.count(_ERROR) != len(others):
        return None
    offsets = range(HEADER_SIZE_BYTES + RECORD_HEADER_SIZE_BYTES,
                    HEADER_SIZE_BYTES + data_count * DATA_RECORD_SIZE_BYTES, DATA_RECORD_SIZE_BYTES)
    contents: list[memoryview | None] = [view[offset:offset + PAGE_SIZE_BYTES] for offset in offsets]
    contents.extend([None] * len(others))
    return kinds, pages, contents


@functools.lru_cache(maxsize=512)
def _data_first_layout(data_count: int, other_count: int) -> struct.Struct:
    return struct.Struct(">" + f"BQ{PAGE_SIZE_BYTES}x" * data_count + "BQ" * other_count)


def _decode_each(view: memoryview, count: int) -> tuple[list[int], list[int], list[memoryview | None]]:
    kinds: list[int] = []
    pages: list[int] = []
    contents: list[memoryview | None] = []
    offset = HEADER_SIZE_BYTES
    end = len(view)
    unpack = RECORD_HEADER.unpack_from
    for index in range(count):
        if end - offset < RECORD_HEADER_SIZE_BYTES:
            raise MalformedPageBatch(f"record {index} of {count} is truncated", offset)
        kind, guest_page = unpack(view, offset)
        if kind not in _KINDS:
            raise MalformedPageBatch(f"record {index} has unknown kind {kind}", offset)
        offset += RECORD_HEADER_SIZE_BYTES
        kinds.append(kind)
        pages.append(guest_page)
        if kind == _DATA:
            if end - offset < PAGE_SIZE_BYTES:
                raise MalformedPageBatch(
                    f"DATA record {index} for page {guest_page} has {end - offset} of {PAGE_SIZE_BYTES} bytes", offset
                )
            contents.append(view[offset:offset + PAGE_SIZE_BYTES])
            offset += PAGE_SIZE_BYTES
        else:
            contents.append(None)
    if offset != end:
        raise MalformedPageBatch(f"{end - offset} bytes after the last of {count} records", offset)
    return kinds, pages, contents
