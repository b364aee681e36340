"""Errors raised while parsing and verifying capsules."""

from __future__ import annotations


class CapsuleMalformed(ValueError):
    """The bytes are not a well-formed FMP capsule; rebuilding the capsule is the only fix."""

    def __init__(self, structure: str, field: str, value: object, reason: str) -> None:
        self.structure = structure
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {structure}.{field} = {value!r}: {reason}")


class SignatureRejected(ValueError):
    """The capsule's PKCS#7 signature does not verify against the trusted certificate."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"capsule signature rejected: {reason}")
