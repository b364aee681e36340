"""TCG PC Client crypto-agile event log with SHA-256 PCRs: build, encode, decode and replay.

Format (TCG PC Client Platform Firmware Profile, section 10): the first record is a SHA-1-format
TCG_PCR_EVENT (PCR 0, EV_NO_ACTION, 20 zero bytes of digest) whose data is the
TCG_EfiSpecIDEvent "Spec ID Event03" listing the digest algorithms; every later record is a
TCG_PCR_EVENT2: pcrIndex u32, eventType u32, digest count u32, per digest hashAlg u16 and the
digest, eventSize u32, event data. All integers are little-endian. Extending a PCR sets it to
SHA-256(PCR || digest), starting from 32 zero bytes.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass, field

EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_S_CRTM_VERSION = 0x8
EV_IPL = 0xD
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0

TPM_ALG_SHA256 = 0x000B
SHA256_SIZE = 32

PCR_FIRMWARE = 0
PCR_BOOT_APPLICATIONS = 4
PCR_SECURE_BOOT_POLICY = 7
PCR_BOOT_CONFIG = 8
PCR_MODULES = 9
PCR_OWNER_KEYS = 14

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

_SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
_MAX_EVENT_BYTES = 16 * 1024 * 1024
_MAX_PCR = 23


class EventLogMalformed(ValueError):
    """Event log bytes that do not decode; `offset` is where the bad record starts."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"invalid TCG event log at offset {offset}: {reason}")


@dataclass(frozen=True)
class PcrEvent:
    pcr_index: int
    event_type: int
    sha256: bytes
    event_data: bytes


def extend_pcr(value: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(value + digest).digest()


@dataclass
class EventLog:
    """An event log being written, with the SHA-256 PCR bank it produces."""

    events: list[PcrEvent] = field(default_factory=list)
    pcrs: dict[int, bytes] = field(default_factory=dict)

    def measure(self, pcr_index: int, event_type: int, event_data: bytes, digest: bytes | None = None) -> None:
        """Extend a PCR with `digest` (default: SHA-256 of the event data) and log the event."""
        if not 0 <= pcr_index <= _MAX_PCR:
            raise ValueError(f"PCR index {pcr_index} is not in 0..{_MAX_PCR}")
        digest = hashlib.sha256(event_data).digest() if digest is None else digest
        if len(digest) != SHA256_SIZE:
            raise ValueError(f"digest has {len(digest)} bytes, SHA-256 has {SHA256_SIZE}")
        self.pcrs[pcr_index] = extend_pcr(self.pcrs.get(pcr_index, bytes(SHA256_SIZE)), digest)
        self.events.append(PcrEvent(pcr_index, event_type, digest, event_data))

    def encode(self) -> bytes:
        return encode_event_log(self.events)


def spec_id_event() -> bytes:
    """Return the TCG_EfiSpecIDEvent for a log with SHA-256 digests only."""
    return (
        _SPEC_ID_SIGNATURE
        + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1)  # platformClass, version 2.0 errata 0, UINTN 64-bit, 1 algorithm
        + struct.pack("<HH", TPM_ALG_SHA256, SHA256_SIZE)
        + b"\x00"  # vendorInfoSize
    )


def encode_event_log(events: list[PcrEvent]) -> bytes:
    header_data = spec_id_event()
    out = bytearray(struct.pack("<II20sI", 0, EV_NO_ACTION, bytes(20), len(header_data)) + header_data)
    for event in events:
        out += struct.pack("<IIIH", event.pcr_index, event.event_type, 1, TPM_ALG_SHA256)
        out += event.sha256
        out += struct.pack("<I", len(event.event_data)) + event.event_data
    return bytes(out)


def decode_event_log(data: bytes) -> list[PcrEvent]:
    """Decode a log written with SHA-256 as its only digest algorithm."""
    offset = _decode_spec_id_header(data)
    events = []
    while offset < len(data):
        event, offset = _decode_event2(data, offset)
        events.append(event)
    return events


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    if size < 0 or offset + size > len(data):
        raise EventLogMalformed(offset, f"{what} needs {size} bytes, {len(data) - offset} left")
    return data[offset : offset + size]


def _decode_spec_id_header(data: bytes) -> int:
    pcr_index, event_type, digest, size = struct.unpack("<II20sI", _take(data, 0, 32, "TCG_PCR_EVENT header"))
    if pcr_index != 0 or event_type != EV_NO_ACTION or digest != bytes(20):
        raise EventLogMalformed(0, "first record is not a PCR 0 EV_NO_ACTION TCG_PCR_EVENT")
    body = _take(data, 32, size, "Spec ID event")
    if body[:16] != _SPEC_ID_SIGNATURE or len(body) < 28:
        raise EventLogMalformed(32, "first record does not hold 'Spec ID Event03'")
    (algorithm_count,) = struct.unpack_from("<I", body, 24)
    sizes = [struct.unpack_from("<HH", body, 28 + 4 * i) for i in range(min(algorithm_count, (len(body) - 28) // 4))]
    if sizes != [(TPM_ALG_SHA256, SHA256_SIZE)]:
        raise EventLogMalformed(32, f"digest algorithms {sizes}, this decoder reads SHA-256-only logs")
    return 32 + size


def _decode_event2(data: bytes, offset: int) -> tuple[PcrEvent, int]:
    pcr_index, event_type, count = struct.unpack("<III", _take(data, offset, 12, "TCG_PCR_EVENT2 header"))
    if pcr_index > _MAX_PCR or count != 1:
        raise EventLogMalformed(offset, f"pcrIndex {pcr_index} with {count} digests, expected 0..23 and 1")
    (algorithm,) = struct.unpack("<H", _take(data, offset + 12, 2, "hashAlg"))
    if algorithm != TPM_ALG_SHA256:
        raise EventLogMalformed(offset, f"hashAlg 0x{algorithm:04x}, expected SHA-256 (0x000b)")
    digest = _take(data, offset + 14, SHA256_SIZE, "digest")
    (size,) = struct.unpack("<I", _take(data, offset + 46, 4, "eventSize"))
    if size > _MAX_EVENT_BYTES:
        raise EventLogMalformed(offset, f"eventSize {size} exceeds {_MAX_EVENT_BYTES}")
    event_data = _take(data, offset + 50, size, "event data")
    return PcrEvent(pcr_index, event_type, digest, event_data), offset + 50 + size


def replay_event_log(data: bytes) -> dict[int, bytes]:
    """Return the PCR values that extending every logged digest produces."""
    pcrs: dict[int, bytes] = {}
    for event in decode_event_log(data):
        if event.event_type != EV_NO_ACTION:
            pcrs[event.pcr_index] = extend_pcr(pcrs.get(event.pcr_index, bytes(SHA256_SIZE)), event.sha256)
    return pcrs


def uefi_variable_data(vendor_guid: uuid.UUID, name: str, value: bytes) -> bytes:
    """Encode UEFI_VARIABLE_DATA: VariableName GUID, name length in CHAR16, data length, name, data."""
    unicode_name = name.encode("utf-16-le")
    return vendor_guid.bytes_le + struct.pack("<QQ", len(name), len(value)) + unicode_name + value


def uefi_image_load_event(image_size_bytes: int, file_path: str) -> bytes:
    """Encode UEFI_IMAGE_LOAD_EVENT with a media file path device path (type 4, subtype 4)."""
    path_bytes = (file_path.replace("/", "\\") + "\x00").encode("utf-16-le")
    device_path = struct.pack("<BBH", 4, 4, 4 + len(path_bytes)) + path_bytes + struct.pack("<BBH", 0x7F, 0xFF, 4)
    return struct.pack("<QQQQ", 0, image_size_bytes, 0, len(device_path)) + device_path
