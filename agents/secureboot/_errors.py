"""Exceptions of the secure boot package, named for what the caller does next."""

from __future__ import annotations

from pathlib import Path


class SecureBootError(Exception):
    """Base class of every error this package raises on purpose."""


class BootRejected(SecureBootError):
    """A boot bank or the host state failed a check, so the host must boot nothing.

    Retrying does not help: the named file has to be replaced or re-signed, or the host
    state repaired. `check` is one of the names in `CHECKS`.
    """

    def __init__(self, path: str | Path, check: str, reason: str) -> None:
        self.path = str(path)
        self.check = check
        self.reason = reason
        super().__init__(f"{self.path}: {check} check failed: {reason}")


class EnrollmentRejected(SecureBootError):
    """An owner key enrollment request was not accepted; the owner key list is unchanged."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"owner key enrollment request rejected: {reason}")


class InvalidInput(SecureBootError, ValueError):
    """An argument or an input file of a build or key tool is invalid; fix it and run again."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")


# Names of the checks a BootRejected can report.
CHECKS = (
    "missing",          # a file the boot needs does not exist or is not a regular file
    "format",           # a file does not parse (signature file, image, boot.cfg, state file)
    "algorithm",        # a signature uses an algorithm the host does not allow or that does not match its key
    "signature",        # a signature does not verify, or a file does not match its signed digest
    "untrusted-key",    # a valid signature by a key that this boot stage does not trust
    "revoked-hash",     # the image's SHA-256 is listed in dbx
    "revoked-cert",     # the signer's certificate is listed in dbx
    "rollback",         # a component generation is below the host's SBAT level
    "state-namespace",  # a path resolves into the host state namespace
    "path",             # a path is absolute, not normalized or resolves outside the boot bank
    "unlisted",         # a file in the boot bank is not listed in boot.cfg
    "kind",             # an image of the wrong kind sits at a stage (e.g. a module as the kernel)
)
