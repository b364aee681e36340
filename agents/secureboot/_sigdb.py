"""UEFI signature databases (db, dbx, MokList): EFI_SIGNATURE_LIST encode and decode.

A database is a concatenation of EFI_SIGNATURE_LIST structures (UEFI 2.10, section 32.4.1):
SignatureType (GUID), SignatureListSize, SignatureHeaderSize and SignatureSize (UINT32,
little-endian), a header of SignatureHeaderSize bytes, then EFI_SIGNATURE_DATA entries of
SignatureSize bytes each: SignatureOwner (GUID) followed by the signature data.
Only the two entry types that db and dbx need are supported: EFI_CERT_X509_GUID and
EFI_CERT_SHA256_GUID. The encoder writes one list per certificate, because all entries of a
list share one SignatureSize; the decoder also accepts several same-size certificates per list.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass, field

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")

# SignatureOwner written on every entry this package creates.
DCFLEET_SIGNATURE_OWNER = uuid.UUID("4e152f83-aebf-42e0-8802-b1c1350197e1")

_LIST_HEADER = struct.Struct("<16sIII")
_GUID_SIZE = 16
_SHA256_SIZE = 32


class SignatureDatabaseMalformed(ValueError):
    """The bytes are not a valid EFI signature database; `offset` is where decoding stopped."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"invalid EFI signature database at offset {offset}: {reason}")


@dataclass(frozen=True)
class SignatureEntry:
    """One EFI_SIGNATURE_DATA: a DER X.509 certificate or a SHA-256 digest."""

    signature_type: uuid.UUID
    data: bytes
    owner: uuid.UUID = DCFLEET_SIGNATURE_OWNER

    def encode(self) -> bytes:
        return self.owner.bytes_le + self.data


@dataclass
class SignatureDatabase:
    """The decoded contents of db, dbx or an owner key list, in file order."""

    entries: list[SignatureEntry] = field(default_factory=list)

    @property
    def certificates_der(self) -> list[bytes]:
        return [e.data for e in self.entries if e.signature_type == EFI_CERT_X509_GUID]

    @property
    def sha256_digests(self) -> list[bytes]:
        return [e.data for e in self.entries if e.signature_type == EFI_CERT_SHA256_GUID]

    def add_certificate(self, der: bytes, owner: uuid.UUID = DCFLEET_SIGNATURE_OWNER) -> None:
        if not self.contains_certificate(der):
            self.entries.append(SignatureEntry(EFI_CERT_X509_GUID, bytes(der), owner))

    def add_sha256(self, digest: bytes, owner: uuid.UUID = DCFLEET_SIGNATURE_OWNER) -> None:
        if len(digest) != _SHA256_SIZE:
            raise ValueError(f"SHA-256 digest must be 32 bytes, got {len(digest)}")
        if not self.contains_sha256(digest):
            self.entries.append(SignatureEntry(EFI_CERT_SHA256_GUID, bytes(digest), owner))

    def contains_certificate(self, der: bytes) -> bool:
        return any(e.data == der for e in self.entries if e.signature_type == EFI_CERT_X509_GUID)

    def contains_sha256(self, digest: bytes) -> bool:
        return any(e.data == digest for e in self.entries if e.signature_type == EFI_CERT_SHA256_GUID)

    def find_certificate_entry(self, der: bytes) -> SignatureEntry | None:
        for entry in self.entries:
            if entry.signature_type == EFI_CERT_X509_GUID and entry.data == der:
                return entry
        return None

    def encode(self) -> bytes:
        return encode_signature_database(self)


def encode_signature_database(database: SignatureDatabase) -> bytes:
    """Encode certificates first, one list each, then all SHA-256 digests in one list."""
    out = bytearray()
    for entry in database.entries:
        if entry.signature_type == EFI_CERT_X509_GUID:
            out += _encode_list(EFI_CERT_X509_GUID, [entry])
    digests = [e for e in database.entries if e.signature_type == EFI_CERT_SHA256_GUID]
    if digests:
        out += _encode_list(EFI_CERT_SHA256_GUID, digests)
    return bytes(out)


def _encode_list(signature_type: uuid.UUID, entries: list[SignatureEntry]) -> bytes:
    signature_size = _GUID_SIZE + len(entries[0].data)
    list_size = _LIST_HEADER.size + signature_size * len(entries)
    header = _LIST_HEADER.pack(signature_type.bytes_le, list_size, 0, signature_size)
    return header + b"".join(e.encode() for e in entries)


def decode_signature_database(data: bytes) -> SignatureDatabase:
    """Decode a database, raising SignatureDatabaseMalformed on any inconsistency.

    An empty byte string is a valid, empty database (an empty dbx).
    """
    database = SignatureDatabase()
    offset = 0
    while offset < len(data):
        offset = _decode_list(data, offset, database)
    return database


def _decode_list(data: bytes, offset: int, database: SignatureDatabase) -> int:
    if len(data) - offset < _LIST_HEADER.size:
        raise SignatureDatabaseMalformed(
            offset, f"{len(data) - offset} bytes left, an EFI_SIGNATURE_LIST header needs {_LIST_HEADER.size}"
        )
    type_bytes, list_size, header_size, signature_size = _LIST_HEADER.unpack_from(data, offset)
    signature_type = uuid.UUID(bytes_le=type_bytes)
    _check_list_sizes(data, offset, signature_type, list_size, header_size, signature_size)
    position = offset + _LIST_HEADER.size
    end = offset + list_size
    while position < end:
        owner = uuid.UUID(bytes_le=data[position : position + _GUID_SIZE])
        payload = data[position + _GUID_SIZE : position + signature_size]
        database.entries.append(SignatureEntry(signature_type, bytes(payload), owner))
        position += signature_size
    return end


def _check_list_sizes(
    data: bytes, offset: int, signature_type: uuid.UUID, list_size: int, header_size: int, signature_size: int
) -> None:
    if signature_type not in (EFI_CERT_X509_GUID, EFI_CERT_SHA256_GUID):
        raise SignatureDatabaseMalformed(offset, f"unsupported SignatureType {signature_type}")
    if header_size != 0:
        raise SignatureDatabaseMalformed(offset, f"SignatureHeaderSize is {header_size}, expected 0")
    if signature_size <= _GUID_SIZE:
        raise SignatureDatabaseMalformed(offset, f"SignatureSize {signature_size} is too small")
    if signature_type == EFI_CERT_SHA256_GUID and signature_size != _GUID_SIZE + _SHA256_SIZE:
        raise SignatureDatabaseMalformed(offset, f"SignatureSize {signature_size} for SHA-256, expected 48")
    if list_size > len(data) - offset:
        raise SignatureDatabaseMalformed(
            offset, f"SignatureListSize {list_size} runs past the end of the data ({len(data) - offset} bytes left)"
        )
    body_size = list_size - _LIST_HEADER.size
    if body_size <= 0 or body_size % signature_size != 0:
        raise SignatureDatabaseMalformed(
            offset, f"SignatureListSize {list_size} is not the header plus a whole number of {signature_size}-byte entries"
        )


def certificate_sha256(der: bytes) -> bytes:
    """Return the SHA-256 fingerprint of a DER certificate."""
    return hashlib.sha256(der).digest()
