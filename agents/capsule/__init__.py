"""UEFI FMP capsules: build, decode and verify a signed single-image capsule."""

from agents.capsule._build import build_capsule
from agents.capsule._errors import CapsuleMalformed, SignatureRejected
from agents.capsule._format import (
    CAPSULE_FLAGS_INITIATE_RESET,
    CAPSULE_FLAGS_PERSIST_ACROSS_RESET,
    CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE,
    FmpCapsule,
    decode_capsule,
    encode_capsule,
    encode_payload_header,
)
from agents.capsule._identity import SigningIdentity, generate_signing_identity
from agents.capsule._guids import DPU_MGMT_OS_IMAGE_TYPE_ID, FMP_CAPSULE_GUID, PKCS7_CERT_TYPE_GUID
from agents.capsule._sign import sign_payload, signed_content, verify_capsule

__all__ = [
    "CAPSULE_FLAGS_INITIATE_RESET",
    "CAPSULE_FLAGS_PERSIST_ACROSS_RESET",
    "CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE",
    "DPU_MGMT_OS_IMAGE_TYPE_ID",
    "FMP_CAPSULE_GUID",
    "PKCS7_CERT_TYPE_GUID",
    "CapsuleMalformed",
    "FmpCapsule",
    "SignatureRejected",
    "SigningIdentity",
    "build_capsule",
    "decode_capsule",
    "encode_capsule",
    "encode_payload_header",
    "generate_signing_identity",
    "sign_payload",
    "signed_content",
    "verify_capsule",
]
