"""Secure boot, measured boot and attestation for dcfleet hosts.

Build a signed boot bank with `build_image`, check it with `verify_bank` (offline) or
`boot_host` (applies pending owner enrollments first), and attest the result with
`create_quote` and `QuoteVerifier`. Failures raise `BootRejected` naming the file, the
check and the reason.
"""

from agents.secureboot._attest import (
    DEFAULT_QUOTE_PCRS,
    AttestationResult,
    Quote,
    QuoteVerifier,
    ReferenceManifest,
    compute_reference_manifest,
    create_quote,
)
from agents.secureboot._bank import (
    BankBuild,
    BankFile,
    add_owner_module,
    build_image,
    sign_bank_file,
    write_boot_config,
)
from agents.secureboot._enroll import (
    PendingEnrollment,
    create_enrollment_request,
    next_enrollment_counter,
    submit_enrollment_request,
)
from agents.secureboot._errors import CHECKS, BootRejected, EnrollmentRejected, InvalidInput, SecureBootError
from agents.secureboot._eventlog import decode_event_log, replay_event_log
from agents.secureboot._keys import (
    ALGORITHM_ECDSA_P256,
    ALGORITHM_ED25519,
    ALGORITHMS,
    ROLES,
    KeyPair,
    KeySet,
    generate_key_pair,
    init_keys,
    load_keys,
)
from agents.secureboot._sigdb import (
    SignatureDatabase,
    SignatureDatabaseMalformed,
    decode_signature_database,
    encode_signature_database,
)
from agents.secureboot._statefs import (
    HostState,
    load_attestation_key,
    load_host_state,
    provision_host_state,
    raise_sbat_level,
    revoke_certificate,
    revoke_image_hash,
)
from agents.secureboot._verifier import BootReport, VerifiedComponent, boot_host, verify_bank

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_ECDSA_P256",
    "ALGORITHM_ED25519",
    "CHECKS",
    "DEFAULT_QUOTE_PCRS",
    "ROLES",
    "AttestationResult",
    "BankBuild",
    "BankFile",
    "BootRejected",
    "BootReport",
    "EnrollmentRejected",
    "HostState",
    "InvalidInput",
    "KeyPair",
    "KeySet",
    "PendingEnrollment",
    "Quote",
    "QuoteVerifier",
    "ReferenceManifest",
    "SecureBootError",
    "SignatureDatabase",
    "SignatureDatabaseMalformed",
    "VerifiedComponent",
    "add_owner_module",
    "boot_host",
    "build_image",
    "compute_reference_manifest",
    "create_enrollment_request",
    "create_quote",
    "decode_event_log",
    "decode_signature_database",
    "encode_signature_database",
    "generate_key_pair",
    "init_keys",
    "load_attestation_key",
    "load_host_state",
    "load_keys",
    "next_enrollment_counter",
    "provision_host_state",
    "raise_sbat_level",
    "replay_event_log",
    "revoke_certificate",
    "revoke_image_hash",
    "sign_bank_file",
    "submit_enrollment_request",
    "verify_bank",
    "write_boot_config",
]
