"""The cluster's capsule signing keys and its MonotonicCount counter.

Layout under `<state dir>/keys/capsule/`:
  root.crt.pem, root.key.pem      self-signed root; BMCs and DPUs trust capsules that chain to it
  signer.crt.pem, signer.key.pem  issued by the root; installers sign DPU OS capsules with it
  monotonic-count                 the last MonotonicCount issued; each capsule gets a larger one
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agents import capsule

from ._config import ConfigError

# The DPU's factory OS carries this MonotonicCount, so the first capsule needs a larger one.
FACTORY_MONOTONIC_COUNT = 1


@dataclass(frozen=True)
class CapsuleKeyPaths:
    root: Path

    @classmethod
    def of(cls, state_dir: str | Path) -> "CapsuleKeyPaths":
        return cls(Path(state_dir) / "keys" / "capsule")

    @property
    def root_cert(self) -> Path:
        return self.root / "root.crt.pem"

    @property
    def root_key(self) -> Path:
        return self.root / "root.key.pem"

    @property
    def signer_cert(self) -> Path:
        return self.root / "signer.crt.pem"

    @property
    def signer_key(self) -> Path:
        return self.root / "signer.key.pem"

    @property
    def monotonic_count(self) -> Path:
        return self.root / "monotonic-count"


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _key_pem(identity: capsule.SigningIdentity) -> bytes:
    return identity.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def ensure_capsule_keys(state_dir: str | Path) -> CapsuleKeyPaths:
    """Create the capsule root and signer once; existing files are kept."""
    paths = CapsuleKeyPaths.of(state_dir)
    if paths.root_cert.exists() and paths.signer_cert.exists() and paths.signer_key.exists():
        return paths
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = capsule.generate_signing_identity("dcfleet capsule root")
    signer = capsule.generate_signing_identity("dcfleet DPU OS capsule signer", issuer=root)
    _write(paths.root_key, _key_pem(root), 0o600)
    _write(paths.signer_key, _key_pem(signer), 0o600)
    _write(paths.root_cert, root.cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(paths.signer_cert, signer.cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def load_trusted_cert(state_dir: str | Path) -> x509.Certificate:
    """Return the capsule root certificate that BMCs and DPUs verify capsules against."""
    path = CapsuleKeyPaths.of(state_dir).root_cert
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"capsule root certificate {path} not found; `dcfleet up` creates it") from None
    except ValueError as exc:
        raise ConfigError(f"invalid capsule root certificate {path}: {exc}") from None


def load_signer(state_dir: str | Path) -> capsule.SigningIdentity:
    """Return the certificate and key that sign DPU OS capsules."""
    paths = CapsuleKeyPaths.of(state_dir)
    try:
        cert = x509.load_pem_x509_certificate(paths.signer_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.signer_key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"capsule signer {exc.filename} not found; `dcfleet up` creates it") from None
    except ValueError as exc:
        raise ConfigError(f"invalid capsule signer in {paths.root}: {exc}") from None
    return capsule.SigningIdentity(cert=cert, key=key)  # type: ignore[arg-type]


def next_monotonic_count(state_dir: str | Path) -> int:
    """Issue the next MonotonicCount: one above every count issued before, across processes.

    The count is kept in a file under an exclusive lock, so two installers never sign with the
    same count.
    """
    path = CapsuleKeyPaths.of(state_dir).monotonic_count
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a+", encoding="ascii") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        text = file.read().strip()
        try:
            last = int(text) if text else FACTORY_MONOTONIC_COUNT
        except ValueError:
            raise ConfigError(f"invalid MonotonicCount counter {path}: {text[:40]!r}; expected an integer") from None
        issued = last + 1
        file.seek(0)
        file.truncate()
        file.write(f"{issued}\n")
        file.flush()
        os.fsync(file.fileno())
    return issued
