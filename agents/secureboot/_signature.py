"""Detached signature files (`NAME.sig`) over the SHA-256 digest of a boot bank file.

A signature file is canonical JSON (sorted keys, no spaces, one trailing newline):
  format "dcfleet-signature", version 1, file_name, digest_algorithm "sha256",
  image_sha256 (hex), algorithm, signer_certificate (base64 DER), signature (base64).
The signature covers `to_be_signed()`: a domain string, the algorithm, the file name, the
digest and the SHA-256 of the signer certificate, so a change to any field of the file, the
embedded certificate included, breaks the signature. Signing the digest rather than the
file keeps the cost of signing and verifying independent of the file size.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agents.secureboot._errors import BootRejected
from agents.secureboot._keys import ALGORITHMS, KeyPair, algorithm_of_key, load_certificate_der, verify_message
from agents.secureboot._sigdb import certificate_sha256

SIGNATURE_SUFFIX = ".sig"
MAX_SIGNATURE_FILE_BYTES = 64 * 1024

_FORMAT = "dcfleet-signature"
_VERSION = 1
_DOMAIN = b"dcfleet boot bank signature v1\x00"
_FIELDS = frozenset(
    {"format", "version", "file_name", "digest_algorithm", "image_sha256", "algorithm", "signer_certificate",
     "signature"}
)


@dataclass(frozen=True)
class SignatureRecord:
    """The decoded contents of a signature file."""

    file_name: str
    image_sha256: bytes
    algorithm: str
    signer_certificate_der: bytes
    signature: bytes

    @property
    def signer_sha256(self) -> bytes:
        return certificate_sha256(self.signer_certificate_der)

    def to_be_signed(self) -> bytes:
        return to_be_signed(self.algorithm, self.file_name, self.image_sha256, self.signer_sha256)


def to_be_signed(algorithm: str, file_name: str, image_sha256: bytes, signer_sha256: bytes) -> bytes:
    return b"".join([_DOMAIN, algorithm.encode(), b"\x00", file_name.encode(), b"\x00", image_sha256, signer_sha256])


def sign_digest(key: KeyPair, file_name: str, image_sha256: bytes) -> bytes:
    """Return the bytes of a signature file for a file with the given name and digest."""
    message = to_be_signed(key.algorithm, file_name, image_sha256, key.fingerprint_sha256)
    record = SignatureRecord(file_name, image_sha256, key.algorithm, key.certificate_der, key.sign(message))
    return encode_signature_record(record)


def encode_signature_record(record: SignatureRecord) -> bytes:
    document = {
        "format": _FORMAT,
        "version": _VERSION,
        "file_name": record.file_name,
        "digest_algorithm": "sha256",
        "image_sha256": record.image_sha256.hex(),
        "algorithm": record.algorithm,
        "signer_certificate": base64.b64encode(record.signer_certificate_der).decode("ascii"),
        "signature": base64.b64encode(record.signature).decode("ascii"),
    }
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def decode_signature_record(data: bytes, path: str | Path) -> SignatureRecord:
    """Decode a signature file strictly: any byte that differs from the canonical form is an error."""
    if len(data) > MAX_SIGNATURE_FILE_BYTES:
        raise BootRejected(path, "format", f"signature file is {len(data)} bytes, the limit is {MAX_SIGNATURE_FILE_BYTES}")
    document = _load_json_object(data, path)
    record = _record_from_document(document, path)
    if encode_signature_record(record) != data:
        raise BootRejected(path, "format", "signature file is not in canonical form (was it edited?)")
    return record


def _load_json_object(data: bytes, path: str | Path) -> dict:
    if not data:
        raise BootRejected(path, "format", "signature file is empty")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BootRejected(path, "format", f"signature file is not valid UTF-8 JSON ({error})") from None
    if not isinstance(document, dict):
        raise BootRejected(path, "format", "signature file is not a JSON object")
    missing = sorted(_FIELDS - set(document))
    unknown = sorted(set(document) - _FIELDS)
    if missing or unknown:
        raise BootRejected(path, "format", f"signature file fields: missing {missing}, unknown {unknown}")
    if document["format"] != _FORMAT or document["version"] != _VERSION:
        raise BootRejected(path, "format",
                           f"format {document['format']!r} version {document['version']!r}, expected {_FORMAT!r} 1")
    if document["digest_algorithm"] != "sha256":
        raise BootRejected(path, "algorithm", f"digest_algorithm {document['digest_algorithm']!r}, expected 'sha256'")
    return document


def _record_from_document(document: dict, path: str | Path) -> SignatureRecord:
    for name in ("file_name", "image_sha256", "algorithm", "signer_certificate", "signature"):
        if not isinstance(document[name], str):
            raise BootRejected(path, "format", f"field {name!r} is not a string")
    try:
        image_sha256 = bytes.fromhex(document["image_sha256"])
        certificate_der = base64.b64decode(document["signer_certificate"], validate=True)
        signature = base64.b64decode(document["signature"], validate=True)
    except (ValueError, binascii.Error) as error:
        raise BootRejected(path, "format", f"invalid hex or base64 field ({error})") from None
    if len(image_sha256) != hashlib.sha256().digest_size:
        raise BootRejected(path, "format", f"image_sha256 has {len(image_sha256)} bytes, expected 32")
    return SignatureRecord(document["file_name"], image_sha256, document["algorithm"], certificate_der, signature)


@functools.lru_cache(maxsize=64)
def _parse_signer(certificate_der: bytes) -> tuple[x509.Certificate, str | None]:
    """Parse a signer certificate once; a bank signs hundreds of files with a handful of keys."""
    certificate = load_certificate_der(certificate_der)
    return certificate, algorithm_of_key(certificate.public_key())


def check_signature_record(record: SignatureRecord, path: str | Path,
                           allowed_algorithms: frozenset[str] | tuple[str, ...] = ALGORITHMS) -> x509.Certificate:
    """Check the algorithm and the signature of a decoded record; return the signer certificate.

    A failure here means the signature file itself is damaged or forged, so it names `path`,
    the signature file. Whether the signed digest matches the file is the caller's next check.
    """
    if record.algorithm not in ALGORITHMS:
        raise BootRejected(path, "algorithm", f"signature algorithm {record.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if record.algorithm not in allowed_algorithms:
        raise BootRejected(path, "algorithm", f"signature algorithm {record.algorithm!r} is not allowed by the host "
                                              f"(allowed: {', '.join(sorted(allowed_algorithms))})")
    try:
        certificate, key_algorithm = _parse_signer(record.signer_certificate_der)
    except ValueError as error:
        raise BootRejected(path, "format", f"signer_certificate is not a DER X.509 certificate ({error})") from None
    if key_algorithm != record.algorithm:
        raise BootRejected(path, "algorithm", f"signature file names algorithm {record.algorithm!r} but the signer key is "
                                              f"{key_algorithm or 'of an unsupported type'}")
    if not verify_message(certificate.public_key(), record.algorithm, record.signature, record.to_be_signed()):
        raise BootRejected(path, "signature", "signature does not verify with the embedded signer certificate")
    return certificate
