"""Messages of secure boot attestation: the quote command and the quarantine event."""

from __future__ import annotations

from ._messages import Message, message


@message("host.quarantined")
class HostQuarantined(Message):
    """A host failed attestation (or its boot failed) and gets no VMs until it boots again."""

    host: str
    check: str
    reason: str
    boot_count: int = 0


@message("host.quote")
class QuoteRequest(Message):
    """Ask a host for a quote of its PCRs over a verifier's fresh nonce."""

    nonce: bytes
