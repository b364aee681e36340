"""Boot faults injected into a host's bank or state on disk; each takes effect at the host's next boot.

- tamper: flip the last byte of a component image, so its SHA-256 no longer matches the signed
  digest (check `signature`);
- revoke: add the image's SHA-256 to the host's dbx (check `revoked-hash`);
- rollback: raise the host's SbatLevel for the component one above the image's generation
  (check `rollback`), as a shim SBAT revocation of that generation would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import agents.secureboot as sb
from agents.secureboot._bank import MODULES_DIR, STAGE_FILES
from agents.secureboot._image import ImageMalformed, decode_image_head, scan_file

from ._secure_boot import HostBootPaths

FAULT_OPERATIONS = ("tamper", "revoke", "rollback")
EXPECTED_CHECKS = {"tamper": "signature", "revoke": "revoked-hash", "rollback": "rollback"}


@dataclass(frozen=True)
class InjectedFault:
    """A fault written to disk: the bank file it affects and the check that will reject it."""

    operation: str
    file: str
    check: str
    detail: str


def component_file(bank: Path, component: str) -> str:
    """Return the bank-relative image of a stage (`loader`, `kernel`, `verifier`) or module NAME.

    Raises InvalidInput naming the components the bank has when `component` is not one of them.
    """
    relative = STAGE_FILES.get(component, f"{MODULES_DIR}/{component}.img")
    if "/" in component or not (bank / relative).is_file():
        modules = sorted(p.name.removesuffix(".img") for p in (bank / MODULES_DIR).glob("*.img"))
        raise sb.InvalidInput(f"module {component!r}", f"not in the boot bank {bank}; choose one of "
                                                       f"{', '.join([*STAGE_FILES, *modules])}")
    return relative


def inject_boot_fault(operation: str, paths: HostBootPaths, component: str) -> InjectedFault:
    """Apply one of FAULT_OPERATIONS to a host's bank or state."""
    if operation not in FAULT_OPERATIONS:
        raise sb.InvalidInput("operation", f"{operation!r} is not one of {', '.join(FAULT_OPERATIONS)}")
    relative = component_file(paths.bank, component)
    apply = {"tamper": _tamper, "revoke": _revoke, "rollback": _rollback}[operation]
    detail = apply(paths, relative, component)
    return InjectedFault(operation, relative, EXPECTED_CHECKS[operation], detail)


def _tamper(paths: HostBootPaths, relative: str, _component: str) -> str:
    path = paths.bank / relative
    with open(path, "r+b") as stream:
        stream.seek(-1, 2)
        offset = stream.tell()
        original = stream.read(1)[0]
        stream.seek(offset)
        stream.write(bytes([original ^ 0xFF]))
    return f"flipped byte {offset} of {relative} (0x{original:02x} -> 0x{original ^ 0xFF:02x})"


def _revoke(paths: HostBootPaths, relative: str, _component: str) -> str:
    digest = scan_file(paths.bank / relative).sha256
    sb.revoke_image_hash(paths.state, digest)
    return f"added SHA-256 {digest.hex()} of {relative} to dbx"


def _rollback(paths: HostBootPaths, relative: str, component: str) -> str:
    scanned = scan_file(paths.bank / relative)
    try:
        metadata = decode_image_head(scanned.head, scanned.size_bytes)
    except ImageMalformed as error:
        raise sb.InvalidInput(relative, f"cannot read its SBAT generation: {error}") from None
    records = [record for record in metadata.sbat if record.component == component] or metadata.sbat
    record = records[0]
    minimum = record.generation + 1
    sb.raise_sbat_level(paths.state, record.component, minimum)
    return f"raised SbatLevel of {record.component!r} to {minimum}; the image carries generation {record.generation}"
