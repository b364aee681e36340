"""A host's secure and measured boot from its bank and state on disk, and its quotes afterwards.

Blocking file I/O and signature checks: the host agent runs these in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import agents.secureboot as sb
from agents.secureboot._statefs import write_atomic

from ._secure_boot import HostBootPaths


@dataclass(frozen=True)
class BootOutcome:
    """A boot attempt: the report when every check passed, else the rejection; never both."""

    boot_count: int
    report: sb.BootReport | None = None
    failure: sb.BootRejected | None = None


def boot_from_disk(paths: HostBootPaths) -> BootOutcome:
    """Boot with `boot_host`, which counts the attempt, applies enrollments, verifies and measures.

    On success the TCG event log is written to `paths.event_log`. On failure the old log is
    removed, so the file on disk always belongs to the boot that is running.
    """
    try:
        report = sb.boot_host(paths.bank, paths.state)
    except sb.BootRejected as failure:
        paths.event_log.unlink(missing_ok=True)
        return BootOutcome(_stored_boot_count(paths), failure=failure)
    except OSError as error:
        paths.event_log.unlink(missing_ok=True)
        failure = sb.BootRejected(error.filename or paths.bank, "missing", f"cannot read: {error.strerror}")
        return BootOutcome(_stored_boot_count(paths), failure=failure)
    write_atomic(paths.event_log, report.event_log)
    return BootOutcome(_stored_boot_count(paths), report=report)


def _stored_boot_count(paths: HostBootPaths) -> int:
    """Return the persistent boot counter, or 0 when the state is too damaged to read."""
    try:
        return sb.load_host_state(paths.state).boot_count
    except (sb.BootRejected, OSError):
        return 0


def quote_pcrs(paths: HostBootPaths, host_id: str, pcrs: dict[int, bytes], nonce: bytes, boot_count: int) -> dict:
    """Sign a quote of the boot's PCRs over `nonce` with the host's attestation key; return its wire form.

    Raises InvalidInput when the nonce is out of range or the attestation key cannot be loaded.
    """
    attestation_key = sb.load_attestation_key(paths.state)
    quote = sb.create_quote(attestation_key, host_id, pcrs, nonce, reset_count=boot_count)
    return quote.to_wire()
