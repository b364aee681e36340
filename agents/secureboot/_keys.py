"""Signing keys of the boot chain: generation, X.509 certificates, PEM files, sign and verify.

Four roles sign boot content, as on a shim-based or ESXi-style platform:
- firmware: its certificate sits in the firmware's `db`, and it signs the boot loader;
- loader: its certificate is embedded in the boot loader image, and it signs the kernel and
  the secure boot verifier;
- vendor: its certificate is embedded in the verifier image, and it signs modules and boot.cfg;
- owner: the machine owner's key, listed in the host's owner key list (MokList), which signs
  modules the owner adds and owner key enrollment requests.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from agents.secureboot._errors import InvalidInput
from agents.secureboot._sigdb import SignatureDatabase, certificate_sha256

ROLES = ("firmware", "loader", "vendor", "owner")

ALGORITHM_ED25519 = "ed25519"
ALGORITHM_ECDSA_P256 = "ecdsa-p256-sha256"
ALGORITHMS = (ALGORITHM_ED25519, ALGORITHM_ECDSA_P256)

_CERTIFICATE_VALIDITY = datetime.timedelta(days=3650)

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class KeyPair:
    """A signing key (None when only the certificate was loaded) and its certificate."""

    role: str
    algorithm: str
    certificate: x509.Certificate
    private_key: PrivateKey | None = None

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint_sha256(self) -> bytes:
        return certificate_sha256(self.certificate_der)

    def sign(self, message: bytes) -> bytes:
        if self.private_key is None:
            raise InvalidInput(f"{self.role} key", "only the certificate is loaded; the private key is needed to sign")
        return sign_message(self.private_key, self.algorithm, message)


@dataclass(frozen=True)
class KeySet:
    """The four boot-chain key pairs, by role."""

    firmware: KeyPair
    loader: KeyPair
    vendor: KeyPair
    owner: KeyPair

    def role(self, name: str) -> KeyPair:
        if name not in ROLES:
            raise InvalidInput("key role", f"{name!r} is not one of {', '.join(ROLES)}")
        return getattr(self, name)


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm == ALGORITHM_ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == ALGORITHM_ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    raise InvalidInput("algorithm", f"{algorithm!r} is not one of {', '.join(ALGORITHMS)}")


def algorithm_of_key(key: PrivateKey | PublicKey) -> str | None:
    """Return the algorithm name a key signs with, or None for any other key type."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ALGORITHM_ED25519
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(key.curve, ec.SECP256R1):
        return ALGORITHM_ECDSA_P256
    return None


def sign_message(key: PrivateKey, algorithm: str, message: bytes) -> bytes:
    if algorithm_of_key(key) != algorithm:
        raise InvalidInput("algorithm", f"the key does not sign with {algorithm!r}")
    if algorithm == ALGORITHM_ED25519:
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify_message(public_key: PublicKey, algorithm: str, signature: bytes, message: bytes) -> bool:
    """Return whether `signature` is valid; the caller has checked that `algorithm` fits the key."""
    try:
        if algorithm == ALGORITHM_ED25519:
            public_key.verify(signature, message)
        else:
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def create_self_signed_certificate(key: PrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dcfleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CERTIFICATE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_code_signing_key_usage(), critical=True)
    )
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, digest)


def _code_signing_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )


def generate_key_pair(role: str, algorithm: str, common_name: str | None = None) -> KeyPair:
    key = generate_key(algorithm)
    certificate = create_self_signed_certificate(key, common_name or f"dcfleet {role} key")
    return KeyPair(role, algorithm, certificate, key)


def load_certificate_der(der: bytes) -> x509.Certificate:
    """Parse a DER certificate, raising ValueError with the parser's reason."""
    return x509.load_der_x509_certificate(der)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write a PKCS#8 PEM key, created with mode 0600 so it is never readable by others."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(pem)
    os.chmod(path, 0o600)


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def key_file_names(role: str) -> tuple[str, str]:
    return f"{role}.key.pem", f"{role}.crt.pem"


def init_keys(key_dir: str | Path, algorithm: str = ALGORITHM_ED25519,
              algorithms: dict[str, str] | None = None) -> KeySet:
    """Generate the four role keys into `key_dir`, with the initial db.esl and an empty dbx.esl.

    `algorithms` overrides `algorithm` per role. Existing key files are never overwritten.
    """
    key_dir = Path(key_dir)
    chosen = {role: (algorithms or {}).get(role, algorithm) for role in ROLES}
    _check_init_arguments(key_dir, chosen, algorithms or {})
    key_dir.mkdir(parents=True, exist_ok=True)
    pairs = {role: generate_key_pair(role, chosen[role]) for role in ROLES}
    for role, pair in pairs.items():
        key_name, cert_name = key_file_names(role)
        write_private_key(key_dir / key_name, pair.private_key)
        write_certificate(key_dir / cert_name, pair.certificate)
    keys = KeySet(**pairs)
    db = SignatureDatabase()
    db.add_certificate(keys.firmware.certificate_der)
    (key_dir / "db.esl").write_bytes(db.encode())
    (key_dir / "dbx.esl").write_bytes(b"")
    return keys


def _check_init_arguments(key_dir: Path, chosen: dict[str, str], overrides: dict[str, str]) -> None:
    unknown_roles = sorted(set(overrides) - set(ROLES))
    if unknown_roles:
        raise InvalidInput("algorithms", f"unknown roles {unknown_roles}; roles are {', '.join(ROLES)}")
    for role, name in chosen.items():
        if name not in ALGORITHMS:
            raise InvalidInput(f"algorithm for the {role} key", f"{name!r} is not one of {', '.join(ALGORITHMS)}")
    for role in ROLES:
        for file_name in key_file_names(role):
            if (key_dir / file_name).exists():
                raise InvalidInput(str(key_dir / file_name), "already exists; keys are never overwritten")


def load_keys(key_dir: str | Path) -> KeySet:
    """Load the four role certificates and, where present, their private keys."""
    key_dir = Path(key_dir)
    return KeySet(**{role: load_key_pair(key_dir, role) for role in ROLES})


def load_certificate_pem(path: Path) -> x509.Certificate:
    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise InvalidInput(str(path), "certificate file not found") from None
    except ValueError as error:
        raise InvalidInput(str(path), f"not a PEM X.509 certificate ({error})") from None
    if algorithm_of_key(certificate.public_key()) is None:
        raise InvalidInput(str(path), f"key type is not one of {', '.join(ALGORITHMS)}")
    return certificate


def load_private_key_pem(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise InvalidInput(str(path), "private key file not found") from None
    except (ValueError, TypeError) as error:
        raise InvalidInput(str(path), f"not an unencrypted PEM private key ({error})") from None
    if algorithm_of_key(key) is None:
        raise InvalidInput(str(path), f"key type is not one of {', '.join(ALGORITHMS)}")
    return key


def load_key_pair(key_dir: Path, role: str) -> KeyPair:
    """Load a role's certificate and, if its key file exists, the private key that matches it."""
    key_name, cert_name = key_file_names(role)
    certificate = load_certificate_pem(key_dir / cert_name)
    private_key = None
    if (key_dir / key_name).exists():
        private_key = load_private_key_pem(key_dir / key_name)
        if not _same_public_key(private_key, certificate):
            raise InvalidInput(str(key_dir / key_name), "private key does not match the certificate next to it")
    return KeyPair(role, algorithm_of_key(certificate.public_key()), certificate, private_key)


def _same_public_key(key: PrivateKey, certificate: x509.Certificate) -> bool:
    encoding = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(encoding, spki) == certificate.public_key().public_bytes(encoding, spki)
