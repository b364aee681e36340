"""The FMP capsule library: round trips, edk2-pytool-library agreement, bad input, signatures."""

from __future__ import annotations

import struct
import uuid

import pytest
from edk2toollib.uefi.edk2.fmp_payload_header import FmpPayloadHeaderClass
from edk2toollib.uefi.fmp_auth_header import FmpAuthHeaderClass
from edk2toollib.uefi.fmp_capsule_header import FmpCapsuleHeaderClass, FmpCapsuleImageHeaderClass
from edk2toollib.uefi.uefi_capsule_header import UefiCapsuleHeaderClass

import agents.capsule as capsule
from agents.capsule import (
    DPU_MGMT_OS_IMAGE_TYPE_ID,
    FMP_CAPSULE_GUID,
    CapsuleMalformed,
    SignatureRejected,
    build_capsule,
    decode_capsule,
    generate_signing_identity,
    verify_capsule,
)

IMAGE = bytes(range(256)) * 40


@pytest.fixture(scope="module")
def root():
    return generate_signing_identity("dcfleet capsule root")


@pytest.fixture(scope="module")
def signer(root):
    return generate_signing_identity("dcfleet capsule signer", issuer=root)


@pytest.fixture(scope="module")
def capsule_bytes(signer):
    return build_capsule(IMAGE, fw_version=0x0102_0003, monotonic_count=42,
                         signer_cert=signer.cert, signer_key=signer.key,
                         lowest_supported_version=0x0100_0000, update_hardware_instance=3)


def test_capsule_exports_public_names():
    assert set(capsule.__all__) == {
        "CAPSULE_FLAGS_INITIATE_RESET", "CAPSULE_FLAGS_PERSIST_ACROSS_RESET",
        "CAPSULE_FLAGS_POPULATE_SYSTEM_TABLE", "DPU_MGMT_OS_IMAGE_TYPE_ID", "FMP_CAPSULE_GUID",
        "PKCS7_CERT_TYPE_GUID", "CapsuleMalformed", "FmpCapsule", "SignatureRejected",
        "SigningIdentity", "build_capsule", "decode_capsule", "encode_capsule",
        "encode_payload_header", "generate_signing_identity", "sign_payload", "signed_content",
        "verify_capsule",
    }


def test_decode_round_trips_fields(capsule_bytes):
    decoded = decode_capsule(capsule_bytes)
    assert decoded.capsule_guid == FMP_CAPSULE_GUID
    assert decoded.update_image_type_id == DPU_MGMT_OS_IMAGE_TYPE_ID
    assert decoded.fw_version == 0x0102_0003
    assert decoded.lowest_supported_version == 0x0100_0000
    assert decoded.monotonic_count == 42
    assert decoded.update_hardware_instance == 3
    assert decoded.update_image_index == 1
    assert decoded.image == IMAGE
    assert decoded.capsule_image_size == len(capsule_bytes)


def test_edk2_decodes_same_fields(capsule_bytes):
    header = UefiCapsuleHeaderClass()
    header.Decode(capsule_bytes)
    ours = decode_capsule(capsule_bytes)
    assert header.CapsuleGuid == ours.capsule_guid
    assert header.HeaderSize == ours.header_size
    assert header.CapsuleImageSize == len(capsule_bytes)
    assert header.PersistAcrossReset
    assert header.InitiateReset
    assert not header.PopulateSystemTable
    fmp = header.FmpCapsuleHeader
    assert fmp.EmbeddedDriverCount == 0
    assert fmp.PayloadItemCount == 1
    image_header = fmp.GetFmpCapsuleImageHeader(0)
    assert image_header.UpdateImageTypeId == DPU_MGMT_OS_IMAGE_TYPE_ID
    assert image_header.UpdateImageIndex == ours.update_image_index
    assert image_header.UpdateHardwareInstance == 3
    auth = image_header.FmpAuthHeader
    assert auth.MonotonicCount == 42
    assert auth.AuthInfo.cert_data == ours.pkcs7_der
    assert auth.FmpPayloadHeader.FwVersion == 0x0102_0003
    assert auth.FmpPayloadHeader.LowestSupportedVersion == 0x0100_0000
    assert auth.FmpPayloadHeader.Payload == IMAGE


def build_with_edk2(signed_payload_header: FmpPayloadHeaderClass, count: int, pkcs7_der: bytes,
                    type_id: uuid.UUID = DPU_MGMT_OS_IMAGE_TYPE_ID) -> bytes:
    auth = FmpAuthHeaderClass()
    auth.MonotonicCount = count
    auth.AuthInfo.cert_data = pkcs7_der
    auth.FmpPayloadHeader = signed_payload_header
    image_header = FmpCapsuleImageHeaderClass()
    image_header.UpdateImageTypeId = type_id
    image_header.UpdateImageIndex = 1
    image_header.FmpAuthHeader = auth
    fmp = FmpCapsuleHeaderClass()
    fmp.AddFmpCapsuleImageHeader(image_header)
    header = UefiCapsuleHeaderClass()
    header.PersistAcrossReset = True
    header.FmpCapsuleHeader = fmp
    return header.Encode()


def test_edk2_built_capsule_verifies(signer, root):
    payload_header = FmpPayloadHeaderClass()
    payload_header.FwVersion = 0x0200_0000
    payload_header.Payload = IMAGE
    pkcs7_der = capsule.sign_payload(payload_header.Encode(), 9, signer.cert, signer.key)
    data = build_with_edk2(payload_header, 9, pkcs7_der)
    decoded = decode_capsule(data)
    assert decoded.fw_version == 0x0200_0000
    assert decoded.monotonic_count == 9
    assert decoded.image == IMAGE
    verify_capsule(decoded, root.cert)


def test_verify_accepts_signer_itself(capsule_bytes, signer):
    verify_capsule(decode_capsule(capsule_bytes), signer.cert)


def test_verify_rejects_untrusted_root(capsule_bytes):
    stranger = generate_signing_identity("stranger")
    with pytest.raises(SignatureRejected, match="not issued by the trusted"):
        verify_capsule(decode_capsule(capsule_bytes), stranger.cert)


def test_verify_rejects_tampered_image(capsule_bytes, root):
    tampered = bytearray(capsule_bytes)
    tampered[-1] ^= 0xFF
    with pytest.raises(SignatureRejected, match="messageDigest"):
        verify_capsule(decode_capsule(bytes(tampered)), root.cert)


def test_verify_rejects_raised_monotonic_count(capsule_bytes, root):
    decoded = decode_capsule(capsule_bytes)
    replayed = capsule.encode_capsule(
        signed_payload=decoded.signed_payload, monotonic_count=43, pkcs7_der=decoded.pkcs7_der,
        update_image_type_id=decoded.update_image_type_id,
    )
    with pytest.raises(SignatureRejected):
        verify_capsule(decode_capsule(replayed), root.cert)


def test_verify_rejects_empty_signature(capsule_bytes, root):
    decoded = decode_capsule(capsule_bytes)
    unsigned = capsule.encode_capsule(
        signed_payload=decoded.signed_payload, monotonic_count=42, pkcs7_der=b"",
        update_image_type_id=decoded.update_image_type_id,
    )
    with pytest.raises(CapsuleMalformed, match="dwLength"):
        decode_capsule(unsigned)


def test_verify_rejects_garbage_signature(capsule_bytes, root):
    decoded = decode_capsule(capsule_bytes)
    garbage = capsule.encode_capsule(
        signed_payload=decoded.signed_payload, monotonic_count=42, pkcs7_der=b"\x30\x82\xff\xff",
        update_image_type_id=decoded.update_image_type_id,
    )
    with pytest.raises(SignatureRejected, match="claims"):
        verify_capsule(decode_capsule(garbage), root.cert)


@pytest.mark.parametrize("length", [0, 10, 27, 31, 40, 100])
def test_decode_rejects_truncated(capsule_bytes, length):
    with pytest.raises(CapsuleMalformed):
        decode_capsule(capsule_bytes[:length])


def test_decode_rejects_trailing_bytes(capsule_bytes):
    with pytest.raises(CapsuleMalformed, match="CapsuleImageSize"):
        decode_capsule(capsule_bytes + b"\0")


def test_decode_rejects_wrong_capsule_guid(capsule_bytes):
    wrong = uuid.uuid4().bytes_le + capsule_bytes[16:]
    with pytest.raises(CapsuleMalformed, match="CapsuleGuid"):
        decode_capsule(wrong)


def test_decode_rejects_wrong_header_size(capsule_bytes):
    wrong = bytearray(capsule_bytes)
    struct.pack_into("<I", wrong, 16, 12)
    with pytest.raises(CapsuleMalformed, match="HeaderSize"):
        decode_capsule(bytes(wrong))


def test_decode_rejects_wrong_image_size(capsule_bytes):
    wrong = bytearray(capsule_bytes)
    image_header_offset = 32 + 16
    struct.pack_into("<I", wrong, image_header_offset + 24, 5)
    with pytest.raises(CapsuleMalformed, match="UpdateImageSize"):
        decode_capsule(bytes(wrong))


def test_decode_rejects_wrong_cert_type(capsule_bytes):
    wrong = bytearray(capsule_bytes)
    cert_type_offset = 32 + 16 + 40 + 8 + 8
    wrong[cert_type_offset:cert_type_offset + 16] = uuid.uuid4().bytes_le
    with pytest.raises(CapsuleMalformed, match="CertType"):
        decode_capsule(bytes(wrong))


def test_decode_rejects_two_payload_items(capsule_bytes):
    wrong = bytearray(capsule_bytes)
    struct.pack_into("<H", wrong, 32 + 6, 2)
    with pytest.raises(CapsuleMalformed, match="PayloadItemCount"):
        decode_capsule(bytes(wrong))


def test_decode_rejects_missing_payload_header(signer):
    payload = b"XXXX" + bytes(12) + IMAGE
    pkcs7_der = capsule.sign_payload(payload, 1, signer.cert, signer.key)
    data = capsule.encode_capsule(signed_payload=payload, monotonic_count=1, pkcs7_der=pkcs7_der,
                                  update_image_type_id=DPU_MGMT_OS_IMAGE_TYPE_ID)
    with pytest.raises(CapsuleMalformed, match="FMP_PAYLOAD_HEADER.Signature"):
        decode_capsule(data)


def test_build_rejects_oversized_version(signer):
    with pytest.raises(CapsuleMalformed, match="FwVersion"):
        build_capsule(IMAGE, fw_version=1 << 32, monotonic_count=1,
                      signer_cert=signer.cert, signer_key=signer.key)
