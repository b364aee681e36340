"""Owner key enrollment: signed requests that add a key to the owner key list at the next boot.

A request is canonical JSON: format "dcfleet-owner-enrollment", version 1, host_id, the
certificate to enroll (base64 DER), a counter, and the algorithm, certificate and signature of
the current owner key that signed it. The signature covers every other field. The host
accepts a request only if an owner key already in its MokList signed it and its counter is
above the last accepted one, which makes a replayed request fail. An accepted request waits
in `owner/pending/` and is applied by the next boot, as shim's MokManager applies MokNew.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agents.secureboot._errors import EnrollmentRejected
from agents.secureboot._keys import ALGORITHMS, KeyPair, algorithm_of_key, load_certificate_der, verify_message
from agents.secureboot._sigdb import certificate_sha256
from agents.secureboot._statefs import (
    OWNER_KEYS_FILE,
    PENDING_DIR,
    HostState,
    load_host_state,
    write_atomic,
    write_counters,
)

_FORMAT = "dcfleet-owner-enrollment"
_DOMAIN = b"dcfleet owner enrollment v1\x00"
_FIELDS = frozenset({"format", "version", "host_id", "certificate", "counter", "algorithm", "signer_certificate",
                     "signature"})
MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True)
class EnrollmentRequest:
    host_id: str
    certificate_der: bytes
    counter: int
    algorithm: str
    signer_certificate_der: bytes
    signature: bytes

    def signed_fields(self) -> dict:
        return {
            "format": _FORMAT,
            "version": 1,
            "host_id": self.host_id,
            "certificate": base64.b64encode(self.certificate_der).decode("ascii"),
            "counter": self.counter,
            "algorithm": self.algorithm,
            "signer_certificate": base64.b64encode(self.signer_certificate_der).decode("ascii"),
        }

    def to_be_signed(self) -> bytes:
        return _DOMAIN + json.dumps(self.signed_fields(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    def encode(self) -> bytes:
        document = dict(self.signed_fields(), signature=base64.b64encode(self.signature).decode("ascii"))
        return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass(frozen=True)
class PendingEnrollment:
    counter: int
    certificate_sha256: str
    subject: str


def create_enrollment_request(host_id: str, certificate: x509.Certificate, owner_key: KeyPair, counter: int) -> bytes:
    """Return a request, signed by `owner_key`, to add `certificate` to host `host_id`'s owner keys.

    `counter` must exceed the host's `owner_request_counter` (see `next_enrollment_counter`).
    """
    unsigned = EnrollmentRequest(host_id, certificate.public_bytes(serialization.Encoding.DER), counter,
                                 owner_key.algorithm, owner_key.certificate_der, b"")
    signature = owner_key.sign(unsigned.to_be_signed())
    return EnrollmentRequest(unsigned.host_id, unsigned.certificate_der, counter, unsigned.algorithm,
                             unsigned.signer_certificate_der, signature).encode()


def next_enrollment_counter(state_dir: str | Path) -> int:
    return load_host_state(state_dir).owner_request_counter + 1


def decode_enrollment_request(data: bytes) -> EnrollmentRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise EnrollmentRejected(f"request is {len(data)} bytes, the limit is {MAX_REQUEST_BYTES}")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnrollmentRejected(f"request is not valid UTF-8 JSON ({error})") from None
    if not isinstance(document, dict) or set(document) != _FIELDS:
        raise EnrollmentRejected(f"request must be a JSON object with exactly the fields {sorted(_FIELDS)}")
    if document["format"] != _FORMAT or document["version"] != 1:
        raise EnrollmentRejected(f"format {document['format']!r} version {document['version']!r}, expected {_FORMAT!r} 1")
    if not isinstance(document["counter"], int) or isinstance(document["counter"], bool) or document["counter"] < 1:
        raise EnrollmentRejected(f"counter {document['counter']!r} is not a positive integer")
    if not all(isinstance(document[name], str) for name in _FIELDS - {"version", "counter"}):
        raise EnrollmentRejected("every field but version and counter must be a string")
    try:
        return EnrollmentRequest(
            document["host_id"], base64.b64decode(document["certificate"], validate=True), document["counter"],
            document["algorithm"], base64.b64decode(document["signer_certificate"], validate=True),
            base64.b64decode(document["signature"], validate=True))
    except (ValueError, binascii.Error) as error:
        raise EnrollmentRejected(f"invalid base64 field ({error})") from None


def check_enrollment_request(request: EnrollmentRequest, state: HostState) -> x509.Certificate:
    """Check host, algorithm, signer and signature against the committed state; return the new certificate."""
    if request.host_id != state.host_id:
        raise EnrollmentRejected(f"request is for host {request.host_id!r}, this host is {state.host_id!r}")
    if request.algorithm not in ALGORITHMS or request.algorithm not in state.allowed_algorithms:
        raise EnrollmentRejected(f"signature algorithm {request.algorithm!r} is not allowed by the host")
    if not state.owner_keys.contains_certificate(request.signer_certificate_der):
        raise EnrollmentRejected("request is not signed by a key in the host's owner key list")
    if state.dbx.contains_certificate(request.signer_certificate_der):
        raise EnrollmentRejected("the signing owner certificate is revoked in dbx")
    try:
        signer = load_certificate_der(request.signer_certificate_der)
    except ValueError as error:
        raise EnrollmentRejected(f"signer certificate is not DER X.509 ({error})") from None
    if algorithm_of_key(signer.public_key()) != request.algorithm:
        raise EnrollmentRejected(f"algorithm {request.algorithm!r} does not match the signer's key")
    if not verify_message(signer.public_key(), request.algorithm, request.signature, request.to_be_signed()):
        raise EnrollmentRejected("signature does not verify with the signing owner certificate")
    try:
        certificate = load_certificate_der(request.certificate_der)
    except ValueError as error:
        raise EnrollmentRejected(f"certificate to enroll is not DER X.509 ({error})") from None
    if algorithm_of_key(certificate.public_key()) is None:
        raise EnrollmentRejected(f"certificate to enroll has a key type other than {', '.join(ALGORITHMS)}")
    return certificate


def submit_enrollment_request(state_dir: str | Path, data: bytes) -> PendingEnrollment:
    """Check a request and queue it for the next boot; raise EnrollmentRejected otherwise."""
    state = load_host_state(state_dir)
    request = decode_enrollment_request(data)
    certificate = check_enrollment_request(request, state)
    if request.counter <= state.owner_request_counter:
        raise EnrollmentRejected(f"counter {request.counter} is not above the last accepted counter "
                                 f"{state.owner_request_counter}; the request is a replay or stale")
    if state.owner_keys.contains_certificate(request.certificate_der):
        raise EnrollmentRejected("certificate is already in the owner key list")
    write_atomic(state.root / PENDING_DIR / f"{request.counter:010d}.json", data)
    state.owner_request_counter = request.counter
    write_counters(state)
    return PendingEnrollment(request.counter, certificate_sha256(request.certificate_der).hex(),
                             certificate.subject.rfc4514_string())


def apply_pending_enrollments(state: HostState) -> tuple[list[str], list[str]]:
    """Apply queued requests in counter order; return applied fingerprints and rejection reasons.

    Each request is checked again against the owner keys as they stand at this boot, so a
    request file placed in the state tree without passing `submit_enrollment_request` fails.
    """
    pending_dir = state.root / PENDING_DIR
    applied: list[str] = []
    rejected: list[str] = []
    for path in sorted(pending_dir.glob("*.json")) if pending_dir.is_dir() else []:
        try:
            request = decode_enrollment_request(path.read_bytes())
            check_enrollment_request(request, state)
            if request.counter > state.owner_request_counter:
                raise EnrollmentRejected(f"counter {request.counter} was never accepted by this host")
        except EnrollmentRejected as error:
            rejected.append(f"{path.name}: {error.reason}")
        else:
            state.owner_keys.add_certificate(request.certificate_der)
            applied.append(certificate_sha256(request.certificate_der).hex())
        path.unlink()
    if applied:
        encoded = state.owner_keys.encode()
        write_atomic(state.root / OWNER_KEYS_FILE, encoded)
        state.raw["MokList"] = encoded
    return applied, rejected
