"""Remote attestation: a host signs a quote of its PCRs and a nonce; a verifier checks it.

The verifier holds the cluster's reference manifest (the PCR values a host booted from the
golden bank must have), the attestation certificate of every host, and the nonces it issued.
Each nonce is accepted once, by the host it was issued to, within its lifetime, so a
replayed quote fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agents.secureboot._errors import InvalidInput
from agents.secureboot._eventlog import (
    PCR_BOOT_APPLICATIONS,
    PCR_BOOT_CONFIG,
    PCR_FIRMWARE,
    PCR_MODULES,
    PCR_OWNER_KEYS,
    PCR_SECURE_BOOT_POLICY,
)
from agents.secureboot._keys import ALGORITHMS, KeyPair, algorithm_of_key, verify_message
from agents.secureboot._statefs import HostState
from agents.secureboot._tpm import (
    TPM_ALG_SHA256,
    AttestMalformed,
    QuoteInfo,
    decode_quote_info,
    encode_quote_info,
    pcr_composite_digest,
)
from agents.secureboot._verifier import verify_bank

DEFAULT_QUOTE_PCRS = (PCR_FIRMWARE, PCR_BOOT_APPLICATIONS, PCR_SECURE_BOOT_POLICY, PCR_BOOT_CONFIG, PCR_MODULES,
                      PCR_OWNER_KEYS)
NONCE_BYTES = 32
DEFAULT_NONCE_LIFETIME_S = 60.0


def attestation_key_name(certificate: x509.Certificate) -> bytes:
    """Return a TPM-style name for an attestation key: nameAlg SHA-256, then SHA-256 of its SubjectPublicKeyInfo.

    A real TPM hashes its TPMT_PUBLIC area instead; these keys have none.
    """
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return TPM_ALG_SHA256.to_bytes(2, "big") + hashlib.sha256(spki).digest()


@dataclass(frozen=True)
class Quote:
    """A signed TPMS_ATTEST and the PCR values the host claims, which only explain a mismatch."""

    host_id: str
    attest: bytes
    algorithm: str
    signature: bytes
    pcr_values: dict[int, bytes] = field(default_factory=dict)

    def to_wire(self) -> dict:
        """Return a dict of str, bytes and lists that msgpack and the agents' messages carry."""
        return {"host_id": self.host_id, "attest": self.attest, "algorithm": self.algorithm,
                "signature": self.signature, "pcr_values": [[i, v] for i, v in sorted(self.pcr_values.items())]}

    @classmethod
    def from_wire(cls, message: object) -> Quote:
        """Decode a wire dict, raising InvalidInput naming the first bad field."""
        if not isinstance(message, dict):
            raise InvalidInput("quote", f"expected a map, got {type(message).__name__}")
        for name, kind in (("host_id", str), ("attest", bytes), ("algorithm", str), ("signature", bytes),
                           ("pcr_values", list)):
            if not isinstance(message.get(name), kind):
                raise InvalidInput(f"quote field {name!r}", f"missing or not {kind.__name__}")
        pcr_values = {}
        for item in message["pcr_values"]:
            if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], int)
                    or not isinstance(item[1], bytes) or len(item[1]) != 32):
                raise InvalidInput("quote field 'pcr_values'", f"entry {item!r} is not [index, 32-byte value]")
            pcr_values[item[0]] = item[1]
        return cls(message["host_id"], message["attest"], message["algorithm"], message["signature"], pcr_values)


def create_quote(attestation_key: KeyPair, host_id: str, pcrs: dict[int, bytes], nonce: bytes, *,
                 selection: tuple[int, ...] = DEFAULT_QUOTE_PCRS, reset_count: int = 0) -> Quote:
    """Sign a quote over the selected PCRs and the verifier's nonce with the host's attestation key."""
    if not 8 <= len(nonce) <= 64:
        raise InvalidInput("nonce", f"{len(nonce)} bytes, expected 8 to 64")
    info = QuoteInfo(attestation_key_name(attestation_key.certificate), nonce, int(time.monotonic() * 1000),
                     reset_count, 0, True, 0, tuple(sorted(selection)), pcr_composite_digest(pcrs, selection))
    attest = encode_quote_info(info)
    selected = {index: pcrs.get(index, bytes(32)) for index in selection}
    return Quote(host_id, attest, attestation_key.algorithm, attestation_key.sign(attest), selected)


@dataclass(frozen=True)
class ReferenceManifest:
    """Expected SHA-256 PCR values of a host booted from the golden bank."""

    pcrs: dict[int, bytes]

    @property
    def selection(self) -> tuple[int, ...]:
        return tuple(sorted(self.pcrs))

    def to_json(self) -> str:
        return json.dumps({"format": "dcfleet-reference-manifest", "version": 1, "hash": "sha256",
                           "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())}}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ReferenceManifest:
        try:
            document = json.loads(text)
            if document["format"] != "dcfleet-reference-manifest" or document["hash"] != "sha256":
                raise ValueError("format or hash is wrong")
            pcrs = {int(i): bytes.fromhex(v) for i, v in document["pcrs"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise InvalidInput("reference manifest", f"not a dcfleet-reference-manifest JSON document ({error})") from None
        if not pcrs or any(not 0 <= i <= 23 or len(v) != 32 for i, v in pcrs.items()):
            raise InvalidInput("reference manifest", "pcrs must map 0..23 to 32-byte SHA-256 values")
        return cls(pcrs)


def compute_reference_manifest(bank_dir: str | Path, host_state: str | Path | HostState,
                               selection: tuple[int, ...] = DEFAULT_QUOTE_PCRS) -> ReferenceManifest:
    """Boot the golden bank offline against a golden host state and keep the selected PCRs."""
    report = verify_bank(bank_dir, host_state)
    return ReferenceManifest({index: report.pcrs.get(index, bytes(32)) for index in selection})


@dataclass(frozen=True)
class AttestationResult:
    """Pass, or the failed check (nonce, signature, pcr-mismatch, ...) with its reason."""

    host_id: str
    passed: bool
    check: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class _IssuedNonce:
    host_id: str
    issued_at_s: float


class QuoteVerifier:
    """Issue nonces and check quotes against a reference manifest; keeps the nonces it issued."""

    def __init__(self, reference: ReferenceManifest, attestation_certificates: dict[str, x509.Certificate], *,
                 nonce_lifetime_s: float = DEFAULT_NONCE_LIFETIME_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reference = reference
        self._certificates = dict(attestation_certificates)
        self._nonce_lifetime_s = nonce_lifetime_s
        self._clock = clock
        self._nonces: dict[bytes, _IssuedNonce] = {}

    def register_host(self, host_id: str, certificate: x509.Certificate) -> None:
        self._certificates[host_id] = certificate

    def issue_nonce(self, host_id: str) -> bytes:
        now = self._clock()
        self._nonces = {n: i for n, i in self._nonces.items() if now - i.issued_at_s <= self._nonce_lifetime_s}
        nonce = os.urandom(NONCE_BYTES)
        self._nonces[nonce] = _IssuedNonce(host_id, now)
        return nonce

    def verify(self, host_id: str, quote: Quote) -> AttestationResult:
        try:
            info = self._check_signed(host_id, quote)
            self._consume_nonce(host_id, info.extra_data)
            self._check_pcrs(info, quote)
        except _QuoteFailed as failure:
            return AttestationResult(host_id, False, failure.check, failure.reason)
        return AttestationResult(host_id, True)

    def _check_signed(self, host_id: str, quote: Quote) -> QuoteInfo:
        if quote.host_id != host_id:
            raise _QuoteFailed("host", f"quote is from {quote.host_id!r}, expected {host_id!r}")
        certificate = self._certificates.get(host_id)
        if certificate is None:
            raise _QuoteFailed("untrusted-key", f"no attestation certificate is registered for {host_id!r}")
        key_algorithm = algorithm_of_key(certificate.public_key())
        if quote.algorithm not in ALGORITHMS or quote.algorithm != key_algorithm:
            raise _QuoteFailed("algorithm", f"quote algorithm {quote.algorithm!r}, the host's key uses {key_algorithm!r}")
        if not verify_message(certificate.public_key(), quote.algorithm, quote.signature, quote.attest):
            raise _QuoteFailed("signature", "quote signature does not verify with the host's attestation key")
        try:
            info = decode_quote_info(quote.attest)
        except AttestMalformed as error:
            raise _QuoteFailed("format", str(error)) from None
        if info.qualified_signer != attestation_key_name(certificate):
            raise _QuoteFailed("signature", "qualifiedSigner does not name the host's attestation key")
        return info

    def _consume_nonce(self, host_id: str, nonce: bytes) -> None:
        issued = self._nonces.pop(nonce, None)
        if issued is None:
            raise _QuoteFailed("nonce", "nonce was not issued by this verifier or was already used (stale quote)")
        if issued.host_id != host_id:
            raise _QuoteFailed("nonce", f"nonce was issued to {issued.host_id!r}, not {host_id!r}")
        age_s = self._clock() - issued.issued_at_s
        if age_s > self._nonce_lifetime_s:
            raise _QuoteFailed("nonce", f"nonce is {age_s:.1f} s old, the lifetime is {self._nonce_lifetime_s} s")

    def _check_pcrs(self, info: QuoteInfo, quote: Quote) -> None:
        expected = self.reference.selection
        if info.pcr_selection != expected:
            raise _QuoteFailed("pcr-selection", f"quote selects PCRs {list(info.pcr_selection)}, expected {list(expected)}")
        if info.pcr_digest == pcr_composite_digest(self.reference.pcrs, expected):
            return
        claimed_match = pcr_composite_digest(quote.pcr_values, expected) == info.pcr_digest
        if claimed_match:
            differing = [i for i in expected if quote.pcr_values.get(i, bytes(32)) != self.reference.pcrs[i]]
            raise _QuoteFailed("pcr-mismatch", f"PCRs {differing} differ from the reference manifest")
        raise _QuoteFailed("pcr-mismatch", "PCR digest differs from the reference manifest (the claimed PCR values do "
                                           "not match the signed digest either)")


class _QuoteFailed(Exception):
    def __init__(self, check: str, reason: str) -> None:
        self.check = check
        self.reason = reason
        super().__init__(f"{check}: {reason}")
