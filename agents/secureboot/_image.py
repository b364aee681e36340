"""Component images: a small PE-like container with named sections, and streaming hashing.

Layout (little-endian):
  0  magic "DCFIMAGE"            8 bytes
  8  format version (1)          u16
  10 kind (1 loader, 2 kernel, 3 verifier, 4 module)  u16
  12 section count               u16
  14 reserved, zero              u16
  16 header size: offset of the payload section        u32
  20 reserved, zero              u32
  24 section table: per section a NUL-padded 8-byte name, offset u64, size u64
Sections: `.sbat` is the SBAT CSV and is required. `.certdb` is an EFI signature database of
the certificates this stage trusts for the next one; loader and verifier images need it and
other images must not have it. `.text` is the payload: required, last, and running to the
end of the file.
All sections but `.text` lie inside the first `MAX_HEADER_BYTES`, so a verifier can hash a
file in one streaming pass and keep only its first chunk for parsing.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from agents.secureboot._sbat import SbatMalformed, SbatRecord, decode_sbat_section, encode_sbat_section
from agents.secureboot._sigdb import SignatureDatabase, SignatureDatabaseMalformed, decode_signature_database

IMAGE_MAGIC = b"DCFIMAGE"
IMAGE_KINDS = {"loader": 1, "kernel": 2, "verifier": 3, "module": 4}
KINDS_WITH_CERTDB = ("loader", "verifier")

CHUNK_BYTES = 1024 * 1024
MAX_HEADER_BYTES = CHUNK_BYTES

_HEADER = struct.Struct("<8sHHHHII")
_SECTION = struct.Struct("<8sQQ")
_KIND_NAMES = {number: name for name, number in IMAGE_KINDS.items()}
_KNOWN_SECTIONS = (".sbat", ".certdb", ".text")


class ImageMalformed(ValueError):
    """An image that does not follow the container layout."""


@dataclass(frozen=True)
class ScannedFile:
    """One streaming pass over a file: its digest, size and first chunk."""

    sha256: bytes
    size_bytes: int
    head: bytes


@dataclass(frozen=True)
class ImageMetadata:
    kind: str
    sbat: list[SbatRecord]
    certdb: SignatureDatabase | None
    payload_offset: int
    payload_size_bytes: int


def image_head_length(first_chunk: bytes | memoryview) -> int:
    """Return how many leading bytes of an image hold its header and small sections.

    Only the declared header size is read here; `decode_image_head` validates it later. Files
    without the image magic keep the whole first chunk so the decoder can report the problem.
    """
    if len(first_chunk) >= _HEADER.size and bytes(first_chunk[:8]) == IMAGE_MAGIC:
        declared = int.from_bytes(first_chunk[16:20], "little")
        return min(max(declared, _HEADER.size), MAX_HEADER_BYTES)
    return MAX_HEADER_BYTES


def scan_file(path: str | Path, head_bytes: int | None = None) -> ScannedFile:
    """Hash a file in CHUNK_BYTES reads into one reused buffer, keeping its first bytes.

    The kept head is `head_bytes` long, or for an image its header (see `image_head_length`).
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        count = stream.readinto(buffer)
        keep = image_head_length(view[:count]) if head_bytes is None else head_bytes
        head = bytes(view[: min(count, keep)])
        size = 0
        while count:
            digest.update(view[:count])
            size += count
            count = stream.readinto(buffer)
    return ScannedFile(digest.digest(), size, head)


def encode_image_header(kind: str, sbat: list[SbatRecord], certdb: SignatureDatabase | None,
                        payload_size_bytes: int) -> bytes:
    """Return every byte of an image that precedes its payload."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"image kind {kind!r} is not one of {', '.join(IMAGE_KINDS)}")
    if (certdb is not None) != (kind in KINDS_WITH_CERTDB):
        raise ValueError(f"a {kind} image {'needs' if kind in KINDS_WITH_CERTDB else 'must not have'} a .certdb")
    sections = [(".sbat", encode_sbat_section(sbat))]
    if certdb is not None:
        sections.append((".certdb", certdb.encode()))
    table_size = _HEADER.size + _SECTION.size * (len(sections) + 1)
    header_size = table_size + sum(len(data) for _, data in sections)
    if header_size > MAX_HEADER_BYTES:
        raise ValueError(f"image sections before the payload take {header_size} bytes, the limit is {MAX_HEADER_BYTES}")
    table = bytearray(_HEADER.pack(IMAGE_MAGIC, 1, IMAGE_KINDS[kind], len(sections) + 1, 0, header_size, 0))
    offset = table_size
    for name, data in sections:
        table += _SECTION.pack(name.encode("ascii"), offset, len(data))
        offset += len(data)
    table += _SECTION.pack(b".text", header_size, payload_size_bytes)
    return bytes(table) + b"".join(data for _, data in sections)


def decode_image_head(head: bytes, size_bytes: int) -> ImageMetadata:
    """Parse the header and small sections of an image whose first bytes are `head`."""
    if len(head) < _HEADER.size:
        raise ImageMalformed(f"file is {size_bytes} bytes, shorter than the {_HEADER.size}-byte image header")
    magic, version, kind_number, count, reserved, header_size, reserved2 = _HEADER.unpack_from(head, 0)
    if magic != IMAGE_MAGIC:
        raise ImageMalformed(f"magic {magic!r} is not {IMAGE_MAGIC!r}")
    if version != 1 or reserved or reserved2:
        raise ImageMalformed(f"format version {version} with reserved fields {reserved}/{reserved2}, expected 1 and 0")
    if kind_number not in _KIND_NAMES:
        raise ImageMalformed(f"kind {kind_number} is not one of {sorted(_KIND_NAMES)}")
    if not _HEADER.size + _SECTION.size * count <= header_size <= min(len(head), size_bytes):
        raise ImageMalformed(f"header size {header_size} does not fit the section table and the file")
    sections = _decode_section_table(head, count, header_size, size_bytes)
    return _metadata_from_sections(_KIND_NAMES[kind_number], head, sections, size_bytes)


def _decode_section_table(head: bytes, count: int, header_size: int, size_bytes: int) -> dict[str, tuple[int, int]]:
    sections: dict[str, tuple[int, int]] = {}
    position = _HEADER.size + _SECTION.size * count
    for index in range(count):
        raw_name, offset, size = _SECTION.unpack_from(head, _HEADER.size + _SECTION.size * index)
        name = raw_name.rstrip(b"\x00").decode("ascii", "replace")
        if name not in _KNOWN_SECTIONS or name in sections:
            raise ImageMalformed(f"section {name!r} is unknown or repeated")
        if offset != position:
            raise ImageMalformed(f"section {name} starts at {offset}, expected {position} (sections must be contiguous)")
        position = offset + size
        sections[name] = (offset, size)
    if ".text" not in sections or ".sbat" not in sections:
        raise ImageMalformed("image needs both a .sbat and a .text section")
    text_offset, text_size = sections[".text"]
    if text_offset != header_size or text_offset + text_size != size_bytes:
        raise ImageMalformed(f".text spans {text_offset}+{text_size} bytes, expected {header_size} to the end of the "
                             f"{size_bytes}-byte file")
    return sections


def _metadata_from_sections(kind: str, head: bytes, sections: dict[str, tuple[int, int]],
                            size_bytes: int) -> ImageMetadata:
    offset, size = sections[".sbat"]
    try:
        sbat = decode_sbat_section(head[offset : offset + size])
    except SbatMalformed as error:
        raise ImageMalformed(f".sbat section, {error}") from None
    certdb = None
    if (".certdb" in sections) != (kind in KINDS_WITH_CERTDB):
        raise ImageMalformed(f"a {kind} image {'needs' if kind in KINDS_WITH_CERTDB else 'must not have'} a .certdb")
    if ".certdb" in sections:
        offset, size = sections[".certdb"]
        try:
            certdb = decode_signature_database(head[offset : offset + size])
        except SignatureDatabaseMalformed as error:
            raise ImageMalformed(f".certdb section, {error}") from None
    text_offset, text_size = sections[".text"]
    return ImageMetadata(kind, sbat, certdb, text_offset, text_size)


def write_image(destination: Path, kind: str, source: Path, sbat: list[SbatRecord],
                certdb: SignatureDatabase | None) -> ScannedFile:
    """Write an image whose payload is the bytes of `source`; return the image's digest and size."""
    payload_size = source.stat().st_size
    header = encode_image_header(kind, sbat, certdb, payload_size)
    digest = hashlib.sha256(header)
    written = len(header)
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        writer.write(header)
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            written += len(chunk)
    if written != len(header) + payload_size:
        raise ValueError(f"{source} changed size while it was copied")
    return ScannedFile(digest.digest(), written, header[:MAX_HEADER_BYTES])
