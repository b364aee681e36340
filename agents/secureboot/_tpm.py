"""TPM 2.0 quote structures: TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE, encoded and decoded.

Encoding follows TPM 2.0 Library Part 2 (big-endian): magic TPM_GENERATED_VALUE, type,
qualifiedSigner (TPM2B_NAME), extraData (TPM2B_DATA, the verifier's nonce), clockInfo
(clock u64, resetCount u32, restartCount u32, safe u8), firmwareVersion u64, then
TPMS_QUOTE_INFO: a TPML_PCR_SELECTION and pcrDigest (TPM2B_DIGEST), the SHA-256 of the
selected PCR values concatenated in ascending PCR order.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
PCR_SELECT_BYTES = 3  # 24 PCRs
MAX_NONCE_BYTES = 64


class AttestMalformed(ValueError):
    """Bytes that are not a TPMS_ATTEST quote."""


@dataclass(frozen=True)
class QuoteInfo:
    """The decoded fields of a TPMS_ATTEST quote."""

    qualified_signer: bytes
    extra_data: bytes
    clock_ms: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_selection: tuple[int, ...]
    pcr_digest: bytes


def pcr_composite_digest(pcrs: dict[int, bytes], selection: tuple[int, ...]) -> bytes:
    """Return SHA-256 over the selected PCR values in ascending index order; absent PCRs count as zeros."""
    return hashlib.sha256(b"".join(pcrs.get(index, bytes(32)) for index in sorted(selection))).digest()


def _pcr_bitmap(selection: tuple[int, ...]) -> bytes:
    bitmap = bytearray(PCR_SELECT_BYTES)
    for index in selection:
        if not 0 <= index < 8 * PCR_SELECT_BYTES:
            raise ValueError(f"PCR index {index} is not in 0..{8 * PCR_SELECT_BYTES - 1}")
        bitmap[index // 8] |= 1 << (index % 8)
    return bytes(bitmap)


def encode_quote_info(info: QuoteInfo) -> bytes:
    if len(info.extra_data) > MAX_NONCE_BYTES:
        raise ValueError(f"extraData is {len(info.extra_data)} bytes, the limit is {MAX_NONCE_BYTES}")
    return b"".join([
        struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE),
        struct.pack(">H", len(info.qualified_signer)), info.qualified_signer,
        struct.pack(">H", len(info.extra_data)), info.extra_data,
        struct.pack(">QIIB", info.clock_ms, info.reset_count, info.restart_count, int(info.safe)),
        struct.pack(">Q", info.firmware_version),
        struct.pack(">IHB", 1, TPM_ALG_SHA256, PCR_SELECT_BYTES), _pcr_bitmap(info.pcr_selection),
        struct.pack(">H", len(info.pcr_digest)), info.pcr_digest,
    ])


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, field_name: str) -> bytes:
        if self.offset + size > len(self.data):
            raise AttestMalformed(f"{field_name} at offset {self.offset} needs {size} bytes, {len(self.data) - self.offset} left")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str, field_name: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), field_name))

    def sized(self, field_name: str) -> bytes:
        (size,) = self.unpack(">H", f"{field_name} size")
        return self.take(size, field_name)


def decode_quote_info(data: bytes) -> QuoteInfo:
    reader = _Reader(data)
    magic, attest_type = reader.unpack(">IH", "magic and type")
    if magic != TPM_GENERATED_VALUE or attest_type != TPM_ST_ATTEST_QUOTE:
        raise AttestMalformed(f"magic 0x{magic:08x} type 0x{attest_type:04x}, expected TPM_GENERATED_VALUE and "
                              "TPM_ST_ATTEST_QUOTE")
    signer = reader.sized("qualifiedSigner")
    extra_data = reader.sized("extraData")
    clock_ms, reset_count, restart_count, safe = reader.unpack(">QIIB", "clockInfo")
    (firmware_version,) = reader.unpack(">Q", "firmwareVersion")
    count, hash_alg, select_size = reader.unpack(">IHB", "pcrSelect")
    if count != 1 or hash_alg != TPM_ALG_SHA256 or select_size != PCR_SELECT_BYTES:
        raise AttestMalformed(f"PCR selection of {count} banks, hash 0x{hash_alg:04x}, {select_size} bytes; expected "
                              "one SHA-256 bank of 24 PCRs")
    bitmap = reader.take(PCR_SELECT_BYTES, "pcrSelect bitmap")
    selection = tuple(i for i in range(8 * PCR_SELECT_BYTES) if bitmap[i // 8] >> (i % 8) & 1)
    pcr_digest = reader.sized("pcrDigest")
    if reader.offset != len(data):
        raise AttestMalformed(f"{len(data) - reader.offset} bytes follow the quote")
    return QuoteInfo(signer, extra_data, clock_ms, reset_count, restart_count, bool(safe), firmware_version,
                     selection, pcr_digest)
