"""Encode and decode a signed UEFI FMP capsule holding one image.

Layout, all integers little-endian (UEFI 2.10 sections 8.5.3 and 23.3, edk2 FmpDevicePkg):

    EFI_CAPSULE_HEADER            CapsuleGuid, HeaderSize, Flags, CapsuleImageSize
    EFI_FIRMWARE_MANAGEMENT_CAPSULE_HEADER
                                  Version 1, EmbeddedDriverCount, PayloadItemCount, ItemOffsetList
    EFI_FIRMWARE_MANAGEMENT_CAPSULE_IMAGE_HEADER (version 2)
                                  UpdateImageTypeId, UpdateImageIndex, UpdateImageSize, ...
    EFI_FIRMWARE_IMAGE_AUTHENTICATION
                                  MonotonicCount, WIN_CERTIFICATE_UEFI_GUID with a DER PKCS#7
    FMP_PAYLOAD_HEADER            Signature "MSS1", HeaderSize, FwVersion, LowestSupportedVersion
    image bytes
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from agents.capsule._errors import CapsuleMalformed
from agents.capsule._guids import FMP_CAPSULE_GUID, PKCS7_CERT_TYPE_GUID

CAPSULE_FLAGS_PERSIST_ACROSS_RESET = 0x00010000
CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE = 0x00020000
CAPSULE_FLAGS_INITIATE_RESET = 0x00040000

_CAPSULE_HEADER = struct.Struct("<16sIII")
# edk2's GenerateCapsule pads EFI_CAPSULE_HEADER to 32 bytes, and edk2-pytool-library rejects
# a HeaderSize below 32, so capsules built here use 32.
CAPSULE_HEADER_SIZE_BYTES = 32
_FMP_HEADER = struct.Struct("<IHH")
_ITEM_OFFSET = struct.Struct("<Q")
_IMAGE_HEADER = struct.Struct("<I16sB3sIIQ")
_MONOTONIC_COUNT = struct.Struct("<Q")
_WIN_CERTIFICATE = struct.Struct("<IHH16s")
_PAYLOAD_HEADER = struct.Struct("<IIII")

FMP_CAPSULE_HEADER_VERSION = 1
FMP_IMAGE_HEADER_VERSION = 2
WIN_CERT_REVISION = 0x0200
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
FMP_PAYLOAD_SIGNATURE = b"MSS1"


@dataclass(frozen=True)
class FmpCapsule:
    """The decoded fields of a single-image FMP capsule."""

    capsule_guid: uuid.UUID
    header_size: int
    flags: int
    capsule_image_size: int
    update_image_type_id: uuid.UUID
    update_image_index: int
    update_hardware_instance: int
    monotonic_count: int
    pkcs7_der: bytes
    fw_version: int
    lowest_supported_version: int
    image: bytes
    vendor_code: bytes

    @property
    def signed_payload(self) -> bytes:
        """FMP_PAYLOAD_HEADER and image: the bytes the signature covers, before MonotonicCount."""
        return encode_payload_header(self.fw_version, self.lowest_supported_version) + self.image


def encode_payload_header(fw_version: int, lowest_supported_version: int) -> bytes:
    """Encode an FMP_PAYLOAD_HEADER (edk2 FmpDevicePkg) with no extra header bytes."""
    _check_u32("FMP_PAYLOAD_HEADER", "FwVersion", fw_version)
    _check_u32("FMP_PAYLOAD_HEADER", "LowestSupportedVersion", lowest_supported_version)
    return _PAYLOAD_HEADER.pack(
        int.from_bytes(FMP_PAYLOAD_SIGNATURE, "little"),
        _PAYLOAD_HEADER.size,
        fw_version,
        lowest_supported_version,
    )


def encode_capsule(
    *,
    signed_payload: bytes,
    monotonic_count: int,
    pkcs7_der: bytes,
    update_image_type_id: uuid.UUID,
    update_image_index: int = 1,
    update_hardware_instance: int = 0,
    flags: int = CAPSULE_FLAGS_PERSIST_ACROSS_RESET | CAPSULE_FLAGS_INITIATE_RESET,
) -> bytes:
    """Wrap an already signed payload in the authentication, image, FMP and capsule headers."""
    if not 1 <= update_image_index <= 0xFF:
        raise CapsuleMalformed(
            "EFI_FIRMWARE_MANAGEMENT_CAPSULE_IMAGE_HEADER", "UpdateImageIndex",
            update_image_index, "must be 1..255",
        )
    _check_u64("EFI_FIRMWARE_IMAGE_AUTHENTICATION", "MonotonicCount", monotonic_count)
    _check_u32("EFI_CAPSULE_HEADER", "Flags", flags)
    win_certificate = _WIN_CERTIFICATE.pack(
        _WIN_CERTIFICATE.size + len(pkcs7_der),
        WIN_CERT_REVISION,
        WIN_CERT_TYPE_EFI_GUID,
        PKCS7_CERT_TYPE_GUID.bytes_le,
    )
    update_image = _MONOTONIC_COUNT.pack(monotonic_count) + win_certificate + pkcs7_der + signed_payload
    image_item = _IMAGE_HEADER.pack(
        FMP_IMAGE_HEADER_VERSION,
        update_image_type_id.bytes_le,
        update_image_index,
        b"\0\0\0",
        len(update_image),
        0,
        update_hardware_instance,
    ) + update_image
    first_item_offset = _FMP_HEADER.size + _ITEM_OFFSET.size
    fmp = _FMP_HEADER.pack(FMP_CAPSULE_HEADER_VERSION, 0, 1) + _ITEM_OFFSET.pack(first_item_offset)
    body = fmp + image_item
    capsule_image_size = CAPSULE_HEADER_SIZE_BYTES + len(body)
    _check_u32("EFI_CAPSULE_HEADER", "CapsuleImageSize", capsule_image_size)
    header = _CAPSULE_HEADER.pack(
        FMP_CAPSULE_GUID.bytes_le, CAPSULE_HEADER_SIZE_BYTES, flags, capsule_image_size
    )
    return header.ljust(CAPSULE_HEADER_SIZE_BYTES, b"\0") + body


def decode_capsule(data: bytes) -> FmpCapsule:
    """Decode a single-image FMP capsule, checking every GUID, version and size field.

    Raises CapsuleMalformed naming the structure and field that is wrong. The signature is
    only extracted here; `verify_capsule` checks it.
    """
    data = bytes(data)
    capsule_guid, header_size, flags, capsule_image_size = _unpack(
        _CAPSULE_HEADER, data, 0, "EFI_CAPSULE_HEADER"
    )
    capsule_uuid = uuid.UUID(bytes_le=capsule_guid)
    if capsule_uuid != FMP_CAPSULE_GUID:
        raise CapsuleMalformed(
            "EFI_CAPSULE_HEADER", "CapsuleGuid", str(capsule_uuid).upper(),
            f"expected the FMP capsule GUID {str(FMP_CAPSULE_GUID).upper()}",
        )
    if capsule_image_size != len(data):
        raise CapsuleMalformed(
            "EFI_CAPSULE_HEADER", "CapsuleImageSize", capsule_image_size,
            f"the capsule is {len(data)} bytes long",
        )
    if not _CAPSULE_HEADER.size <= header_size <= len(data):
        raise CapsuleMalformed(
            "EFI_CAPSULE_HEADER", "HeaderSize", header_size,
            f"must be between {_CAPSULE_HEADER.size} and the capsule size {len(data)}",
        )
    item = _decode_fmp_header(data[header_size:])
    fields = _decode_image_item(item)
    return FmpCapsule(
        capsule_guid=capsule_uuid,
        header_size=header_size,
        flags=flags,
        capsule_image_size=capsule_image_size,
        **fields,
    )


def _decode_fmp_header(fmp: bytes) -> bytes:
    """Return the one payload item of an EFI_FIRMWARE_MANAGEMENT_CAPSULE_HEADER."""
    structure = "EFI_FIRMWARE_MANAGEMENT_CAPSULE_HEADER"
    version, driver_count, item_count = _unpack(_FMP_HEADER, fmp, 0, structure)
    if version != FMP_CAPSULE_HEADER_VERSION:
        raise CapsuleMalformed(structure, "Version", version, f"expected {FMP_CAPSULE_HEADER_VERSION}")
    if driver_count != 0:
        raise CapsuleMalformed(structure, "EmbeddedDriverCount", driver_count,
                               "embedded drivers are not accepted")
    if item_count != 1:
        raise CapsuleMalformed(structure, "PayloadItemCount", item_count, "expected exactly 1 image")
    (offset,) = _unpack(_ITEM_OFFSET, fmp, _FMP_HEADER.size, structure)
    items_start = _FMP_HEADER.size + _ITEM_OFFSET.size
    if not items_start <= offset < len(fmp):
        raise CapsuleMalformed(structure, "ItemOffsetList[0]", offset,
                               f"must be between {items_start} and {len(fmp) - 1}")
    return fmp[offset:]


def _decode_image_item(item: bytes) -> dict[str, object]:
    structure = "EFI_FIRMWARE_MANAGEMENT_CAPSULE_IMAGE_HEADER"
    (version, type_id, index, _reserved, image_size, vendor_code_size,
     hardware_instance) = _unpack(_IMAGE_HEADER, item, 0, structure)
    if version != FMP_IMAGE_HEADER_VERSION:
        raise CapsuleMalformed(structure, "Version", version, f"expected {FMP_IMAGE_HEADER_VERSION}")
    if index < 1:
        raise CapsuleMalformed(structure, "UpdateImageIndex", index, "must be at least 1")
    available = len(item) - _IMAGE_HEADER.size
    if image_size + vendor_code_size != available:
        raise CapsuleMalformed(
            structure, "UpdateImageSize", image_size,
            f"UpdateImageSize + UpdateVendorCodeSize ({vendor_code_size}) must equal the "
            f"{available} bytes that follow the header",
        )
    update_image = item[_IMAGE_HEADER.size:_IMAGE_HEADER.size + image_size]
    fields = _decode_authentication(update_image)
    fields.update(
        update_image_type_id=uuid.UUID(bytes_le=type_id),
        update_image_index=index,
        update_hardware_instance=hardware_instance,
        vendor_code=item[_IMAGE_HEADER.size + image_size:],
    )
    return fields


def _decode_authentication(update_image: bytes) -> dict[str, object]:
    structure = "EFI_FIRMWARE_IMAGE_AUTHENTICATION"
    (monotonic_count,) = _unpack(_MONOTONIC_COUNT, update_image, 0, structure)
    cert_start = _MONOTONIC_COUNT.size
    length, revision, cert_type, cert_guid = _unpack(
        _WIN_CERTIFICATE, update_image, cert_start, "WIN_CERTIFICATE_UEFI_GUID"
    )
    if revision != WIN_CERT_REVISION:
        raise CapsuleMalformed("WIN_CERTIFICATE_UEFI_GUID", "wRevision", hex(revision),
                               f"expected {WIN_CERT_REVISION:#06x}")
    if cert_type != WIN_CERT_TYPE_EFI_GUID:
        raise CapsuleMalformed("WIN_CERTIFICATE_UEFI_GUID", "wCertificateType", hex(cert_type),
                               f"expected {WIN_CERT_TYPE_EFI_GUID:#06x} (WIN_CERT_TYPE_EFI_GUID)")
    if uuid.UUID(bytes_le=cert_guid) != PKCS7_CERT_TYPE_GUID:
        raise CapsuleMalformed(
            "WIN_CERTIFICATE_UEFI_GUID", "CertType", str(uuid.UUID(bytes_le=cert_guid)).upper(),
            f"expected EFI_CERT_TYPE_PKCS7_GUID {str(PKCS7_CERT_TYPE_GUID).upper()}",
        )
    cert_end = cert_start + length
    if length <= _WIN_CERTIFICATE.size or cert_end > len(update_image):
        raise CapsuleMalformed(
            "WIN_CERTIFICATE_UEFI_GUID", "dwLength", length,
            f"must exceed {_WIN_CERTIFICATE.size} and fit in the "
            f"{len(update_image) - cert_start} bytes after MonotonicCount",
        )
    fields = _decode_payload_header(update_image[cert_end:])
    fields.update(
        monotonic_count=monotonic_count,
        pkcs7_der=update_image[cert_start + _WIN_CERTIFICATE.size:cert_end],
    )
    return fields


def _decode_payload_header(payload: bytes) -> dict[str, object]:
    structure = "FMP_PAYLOAD_HEADER"
    signature, header_size, fw_version, lowest = _unpack(_PAYLOAD_HEADER, payload, 0, structure)
    signature_bytes = signature.to_bytes(4, "little")
    if signature_bytes != FMP_PAYLOAD_SIGNATURE:
        raise CapsuleMalformed(structure, "Signature", signature_bytes,
                               f"expected {FMP_PAYLOAD_SIGNATURE!r}")
    if header_size != _PAYLOAD_HEADER.size:
        raise CapsuleMalformed(structure, "HeaderSize", header_size,
                               f"expected {_PAYLOAD_HEADER.size}")
    return {
        "fw_version": fw_version,
        "lowest_supported_version": lowest,
        "image": payload[header_size:],
    }


def _unpack(layout: struct.Struct, data: bytes, offset: int, structure: str) -> tuple:
    if len(data) < offset + layout.size:
        raise CapsuleMalformed(
            structure, "length", len(data) - offset,
            f"truncated: the structure needs {layout.size} bytes",
        )
    return layout.unpack_from(data, offset)


def _check_u32(structure: str, field: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF_FFFF:
        raise CapsuleMalformed(structure, field, value, "must fit in an unsigned 32-bit integer")


def _check_u64(structure: str, field: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF_FFFF_FFFF_FFFF:
        raise CapsuleMalformed(structure, field, value, "must fit in an unsigned 64-bit integer")
