"""Build a signed FMP capsule around a firmware image."""

from __future__ import annotations

import uuid

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from agents.capsule._format import (
    CAPSULE_FLAGS_INITIATE_RESET,
    CAPSULE_FLAGS_PERSIST_ACROSS_RESET,
    encode_capsule,
    encode_payload_header,
)
from agents.capsule._guids import DPU_MGMT_OS_IMAGE_TYPE_ID
from agents.capsule._sign import sign_payload


def build_capsule(
    image: bytes,
    *,
    fw_version: int,
    monotonic_count: int,
    signer_cert: x509.Certificate,
    signer_key: pkcs7.PKCS7PrivateKeyTypes,
    lowest_supported_version: int = 0,
    update_image_type_id: uuid.UUID = DPU_MGMT_OS_IMAGE_TYPE_ID,
    update_image_index: int = 1,
    update_hardware_instance: int = 0,
    flags: int = CAPSULE_FLAGS_PERSIST_ACROSS_RESET | CAPSULE_FLAGS_INITIATE_RESET,
) -> bytes:
    """Return a signed single-image FMP capsule; by default it marks a DPU management OS image."""
    signed_payload = encode_payload_header(fw_version, lowest_supported_version) + image
    signature = sign_payload(signed_payload, monotonic_count, signer_cert, signer_key)
    return encode_capsule(
        signed_payload=signed_payload,
        monotonic_count=monotonic_count,
        pkcs7_der=signature,
        update_image_type_id=update_image_type_id,
        update_image_index=update_image_index,
        update_hardware_instance=update_hardware_instance,
        flags=flags,
    )
