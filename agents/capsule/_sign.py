"""Sign an FMP payload with PKCS#7 and verify a capsule's signature against a trusted certificate.

The signature is a detached DER PKCS#7 SignedData over the signed payload followed by the
8-byte little-endian MonotonicCount, as edk2's FmpAuthenticationLibPkcs7 checks it.
"""

from __future__ import annotations

import struct

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from agents.capsule import _der
from agents.capsule._der import Element
from agents.capsule._errors import SignatureRejected
from agents.capsule._format import FmpCapsule

_OID_SIGNED_DATA = _der.encode_oid("1.2.840.113549.1.7.2")
_OID_MESSAGE_DIGEST = _der.encode_oid("1.2.840.113549.1.9.4")
_DIGESTS: dict[bytes, type[hashes.HashAlgorithm]] = {
    _der.encode_oid("2.16.840.1.101.3.4.2.1"): hashes.SHA256,
    _der.encode_oid("2.16.840.1.101.3.4.2.2"): hashes.SHA384,
    _der.encode_oid("2.16.840.1.101.3.4.2.3"): hashes.SHA512,
}


def signed_content(signed_payload: bytes, monotonic_count: int) -> bytes:
    """Return the bytes the PKCS#7 signature covers: the payload, then MonotonicCount (u64 LE)."""
    return signed_payload + struct.pack("<Q", monotonic_count)


def sign_payload(
    signed_payload: bytes,
    monotonic_count: int,
    signer_cert: x509.Certificate,
    signer_key: pkcs7.PKCS7PrivateKeyTypes,
) -> bytes:
    """Return a detached DER PKCS#7 signature (SHA-256) over the payload and MonotonicCount."""
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(signed_content(signed_payload, monotonic_count))
        .add_signer(signer_cert, signer_key, hashes.SHA256())
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )


def verify_capsule(capsule: FmpCapsule, trusted_cert: x509.Certificate) -> None:
    """Check the capsule's signature; raise SignatureRejected unless it verifies.

    The signer is either `trusted_cert` itself or a certificate embedded in the PKCS#7 that
    `trusted_cert` issued directly. Certificate validity dates are not checked, as in edk2.
    """
    content = signed_content(capsule.signed_payload, capsule.monotonic_count)
    signer_info, embedded_certs = _read_signed_data(capsule.pkcs7_der)
    parts = signer_info.children()
    if len(parts) < 5:
        raise SignatureRejected("PKCS#7 SignerInfo has too few fields")
    signer_cert = _find_signer(parts[1], embedded_certs, trusted_cert)
    digest = _digest_algorithm(parts[2])

    position = 3
    signed_data = content
    if parts[position].tag == 0xA0:
        _check_message_digest(parts[position], content, digest)
        # RFC 5652 5.4: the signature covers the attributes re-encoded with the SET OF tag.
        signed_data = bytes([_der.TAG_SET]) + parts[position].encoding[1:]
        position += 1
    if len(parts) < position + 2:
        raise SignatureRejected("PKCS#7 SignerInfo has no signature")
    signature = _der.expect(parts[position + 1], _der.TAG_OCTET_STRING, "SignerInfo.signature")
    _verify_with_key(signer_cert.public_key(), signature.content, signed_data, digest)


def _read_signed_data(der: bytes) -> tuple[Element, list[x509.Certificate]]:
    if not der:
        raise SignatureRejected("the capsule carries an empty PKCS#7 signature")
    content_info = _der.expect(_der.read_element(der), _der.TAG_SEQUENCE, "ContentInfo")
    fields = content_info.children()
    if len(fields) != 2 or fields[0].content != _OID_SIGNED_DATA or fields[1].tag != 0xA0:
        raise SignatureRejected("PKCS#7 ContentInfo does not hold a SignedData")
    signed_data = _der.expect(fields[1].children()[0], _der.TAG_SEQUENCE, "SignedData")
    parts = signed_data.children()
    certs: list[x509.Certificate] = []
    for part in parts[3:-1]:
        if part.tag == 0xA0:
            certs = [_load_cert(item) for item in part.children()]
    signer_infos = _der.expect(parts[-1], _der.TAG_SET, "SignedData.signerInfos").children()
    if len(signer_infos) != 1:
        raise SignatureRejected(f"expected exactly 1 SignerInfo, found {len(signer_infos)}")
    return signer_infos[0], certs


def _load_cert(element: Element) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(element.encoding)
    except ValueError as exc:
        raise SignatureRejected(f"PKCS#7 carries an unreadable certificate: {exc}") from exc


def _find_signer(
    sid: Element, embedded: list[x509.Certificate], trusted: x509.Certificate
) -> x509.Certificate:
    def matches(cert: x509.Certificate) -> bool:
        return _signer_id_matches(sid, cert)

    if matches(trusted):
        return trusted
    for cert in embedded:
        if not matches(cert):
            continue
        try:
            cert.verify_directly_issued_by(trusted)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise SignatureRejected(
                f"signer {cert.subject.rfc4514_string()} is not issued by the trusted "
                f"certificate {trusted.subject.rfc4514_string()}: {exc or type(exc).__name__}"
            ) from exc
        return cert
    raise SignatureRejected(
        f"the signer is neither the trusted certificate {trusted.subject.rfc4514_string()} "
        "nor a certificate it issued"
    )


def _signer_id_matches(sid: Element, cert: x509.Certificate) -> bool:
    if sid.tag == _der.TAG_SEQUENCE:
        issuer, serial = sid.children()[:2]
        serial_number = int.from_bytes(serial.content, "big", signed=True)
        return (issuer.encoding == cert.issuer.public_bytes()
                and serial_number == cert.serial_number)
    if sid.tag == 0x80:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return False
        return ski.value.digest == sid.content
    raise SignatureRejected(f"PKCS#7 SignerInfo.sid has unknown tag {sid.tag:#04x}")


def _digest_algorithm(algorithm: Element) -> hashes.HashAlgorithm:
    oid = _der.expect(algorithm.children()[0], _der.TAG_OID, "SignerInfo.digestAlgorithm")
    digest_type = _DIGESTS.get(oid.content)
    if digest_type is None:
        raise SignatureRejected(f"unsupported digest algorithm OID {oid.content.hex()}")
    return digest_type()


def _check_message_digest(attributes: Element, content: bytes, digest: hashes.HashAlgorithm) -> None:
    hasher = hashes.Hash(digest)
    hasher.update(content)
    expected = hasher.finalize()
    for attribute in attributes.children():
        oid, values = attribute.children()[:2]
        if oid.content != _OID_MESSAGE_DIGEST:
            continue
        value = _der.expect(values.children()[0], _der.TAG_OCTET_STRING, "messageDigest")
        if value.content != expected:
            raise SignatureRejected("messageDigest does not match the payload and MonotonicCount")
        return
    raise SignatureRejected("PKCS#7 signed attributes lack messageDigest")


def _verify_with_key(public_key: object, signature: bytes, data: bytes,
                     digest: hashes.HashAlgorithm) -> None:
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), digest)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(digest))
        else:
            raise SignatureRejected(f"unsupported signer key type {type(public_key).__name__}")
    except InvalidSignature as exc:
        raise SignatureRejected("the signature does not verify with the signer's public key") from exc
