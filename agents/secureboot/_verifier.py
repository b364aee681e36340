"""The boot chain: verify a boot bank stage by stage against the host state, measuring as it goes.

Stages and their trust anchors:
- firmware verifies loader.img with the certificates in `db` (hash entries in db are ignored);
- the loader verifies kernel.img and verifier.img with the certificates in its own `.certdb`;
- the verifier verifies boot.cfg and every module it lists with the certificates in its own
  `.certdb` (the vendor key) or in the owner key list, and rejects every other bank file.
Every stage also checks dbx (image hash and signer certificate) and the SbatLevel.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from agents.secureboot._bank import BOOT_CONFIG, BOOT_CONFIG_HEADER, MODULES_DIR, STAGE_FILES
from agents.secureboot._enroll import apply_pending_enrollments
from agents.secureboot._errors import BootRejected
from agents.secureboot._eventlog import (
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE_GUID,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EV_S_CRTM_VERSION,
    EV_SEPARATOR,
    PCR_BOOT_APPLICATIONS,
    PCR_BOOT_CONFIG,
    PCR_FIRMWARE,
    PCR_MODULES,
    PCR_OWNER_KEYS,
    PCR_SECURE_BOOT_POLICY,
    EventLog,
    uefi_image_load_event,
    uefi_variable_data,
)
from agents.secureboot._image import ImageMalformed, ImageMetadata, ScannedFile, decode_image_head, scan_file
from agents.secureboot._sbat import find_rollback
from agents.secureboot._sigdb import SignatureDatabase
from agents.secureboot._signature import (
    MAX_SIGNATURE_FILE_BYTES,
    SIGNATURE_SUFFIX,
    SignatureRecord,
    check_signature_record,
    decode_signature_record,
)
from agents.secureboot._statefs import (
    HostState,
    check_namespaces_disjoint,
    load_host_state,
    resolve_bank_path,
    write_counters,
)

# Vendor GUID of the variables this package defines (authority sources, SbatLevel).
DCFLEET_VENDOR_GUID = uuid.UUID("b009cd3b-aa45-4d95-af8f-6c01814e3e40")
MAX_BOOT_CONFIG_BYTES = 64 * 1024
# Hashing of module files runs this many files ahead of the signature checks, on this many threads.
HASH_LOOKAHEAD = 4
HASH_WORKERS = 2


@dataclass(frozen=True)
class TrustAnchor:
    """A certificate list one stage trusts, and the variable name its authority events carry."""

    authority: str
    database: SignatureDatabase
    variable_guid: uuid.UUID
    variable_name: str


@dataclass(frozen=True)
class VerifiedComponent:
    path: str
    kind: str
    authority: str
    signer_subject: str
    algorithm: str
    sha256: bytes
    size_bytes: int
    sbat: tuple[tuple[str, int], ...] = ()


@dataclass
class BootReport:
    """The outcome of a boot bank that passed every check."""

    bank_dir: Path
    host_id: str
    components: list[VerifiedComponent]
    module_paths: list[str]
    pcrs: dict[int, bytes]
    event_log: bytes
    applied_enrollments: list[str] = field(default_factory=list)
    rejected_enrollments: list[str] = field(default_factory=list)


@dataclass
class _Boot:
    bank_root: Path
    state: HostState
    log: EventLog = field(default_factory=EventLog)
    components: list[VerifiedComponent] = field(default_factory=list)
    measured_authorities: set[tuple[str, bytes]] = field(default_factory=set)


def verify_bank(bank_dir: str | Path, host_state: str | Path | HostState, *,
                hash_workers: int = HASH_WORKERS) -> BootReport:
    """Verify and measure a boot bank; return the report or raise BootRejected naming file and check.

    `hash_workers` threads hash module files ahead of the signature checks; 1 keeps hashing
    on a single core.
    """
    if hash_workers < 1:
        raise ValueError(f"hash_workers is {hash_workers}, it must be at least 1")
    state = host_state if isinstance(host_state, HostState) else load_host_state(host_state)
    bank_root = _check_bank_root(bank_dir, state)
    boot = _Boot(bank_root, state)
    _measure_firmware(boot)
    loader = _verify_image(boot, STAGE_FILES["loader"], "loader", [
        TrustAnchor("db", state.db, EFI_IMAGE_SECURITY_DATABASE_GUID, "db")])
    _measure_loader_policy(boot)
    loader_anchor = TrustAnchor("loader", loader.certdb, DCFLEET_VENDOR_GUID, "LoaderVendorDb")
    _verify_image(boot, STAGE_FILES["kernel"], "kernel", [loader_anchor])
    verifier = _verify_image(boot, STAGE_FILES["verifier"], "verifier", [loader_anchor])
    module_anchors = [
        TrustAnchor("vendor", verifier.certdb, DCFLEET_VENDOR_GUID, "VerifierVendorDb"),
        TrustAnchor("owner", state.owner_keys, DCFLEET_VENDOR_GUID, "MokList"),
    ]
    module_paths = _verify_boot_config(boot, module_anchors)
    _verify_modules(boot, module_paths, module_anchors, hash_workers)
    _check_unlisted_files(bank_root, module_paths)
    return BootReport(bank_root, state.host_id, boot.components, module_paths, dict(boot.log.pcrs),
                      boot.log.encode())


def boot_host(bank_dir: str | Path, state_dir: str | Path) -> BootReport:
    """Boot a host: apply pending owner enrollments, count the boot, then verify and measure the bank.

    Unlike `verify_bank`, this changes the host state. The boot count rises even when the bank
    is rejected, because the boot was attempted.
    """
    state = load_host_state(state_dir)
    applied, rejected = apply_pending_enrollments(state)
    state.boot_count += 1
    write_counters(state)
    report = verify_bank(bank_dir, state)
    report.applied_enrollments = applied
    report.rejected_enrollments = rejected
    return report


def _check_bank_root(bank_dir: str | Path, state: HostState) -> Path:
    bank_root = Path(os.path.realpath(bank_dir))
    if bank_root.exists() and not bank_root.is_dir():
        raise BootRejected(bank_dir, "format", "boot bank path is a file, not a directory")
    if not bank_root.is_dir():
        raise BootRejected(bank_dir, "missing", "boot bank directory not found")
    check_namespaces_disjoint(bank_root, state.root)
    if not any(bank_root.iterdir()):
        raise BootRejected(bank_dir, "format", "boot bank is empty; build one with `dcfleet image build`")
    return bank_root


def _measure_firmware(boot: _Boot) -> None:
    log, state = boot.log, boot.state
    log.measure(PCR_FIRMWARE, EV_S_CRTM_VERSION, (state.firmware_version + "\x00").encode("utf-16-le"))
    for name, guid, value in (("SecureBoot", EFI_GLOBAL_VARIABLE, b"\x01"),
                              ("db", EFI_IMAGE_SECURITY_DATABASE_GUID, state.raw["db"]),
                              ("dbx", EFI_IMAGE_SECURITY_DATABASE_GUID, state.raw["dbx"])):
        log.measure(PCR_SECURE_BOOT_POLICY, EV_EFI_VARIABLE_DRIVER_CONFIG, uefi_variable_data(guid, name, value))
    for pcr_index in range(8):
        log.measure(pcr_index, EV_SEPARATOR, bytes(4))


def _measure_loader_policy(boot: _Boot) -> None:
    log, raw = boot.log, boot.state.raw
    log.measure(PCR_SECURE_BOOT_POLICY, EV_EFI_VARIABLE_DRIVER_CONFIG,
                uefi_variable_data(DCFLEET_VENDOR_GUID, "SbatLevel", raw["SbatLevel"]))
    log.measure(PCR_OWNER_KEYS, EV_IPL, b"MokList\x00", hashlib.sha256(raw["MokList"]).digest())


def _read_small_file(path: Path, relative: str, limit: int) -> bytes:
    with open(path, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise BootRejected(relative, "format", f"file is larger than {limit} bytes")
    return data


def _resolve_regular_file(boot: _Boot, relative: str) -> Path:
    resolved = resolve_bank_path(boot.bank_root, relative, boot.state.root)
    try:
        mode = os.stat(resolved).st_mode
    except FileNotFoundError:
        raise BootRejected(relative, "missing", "file not found in the boot bank") from None
    if not stat.S_ISREG(mode):
        raise BootRejected(relative, "format", "not a regular file")
    return resolved


def _verify_signed_file(boot: _Boot, relative: str, anchors: list[TrustAnchor], path: Path | None = None,
                        pending_scan: Future[ScannedFile] | None = None
                        ) -> tuple[ScannedFile, SignatureRecord, x509.Certificate, TrustAnchor]:
    """Check a file's signature file, then its digest, then revocation and trust, in that order.

    `path` and `pending_scan` let the caller resolve the file and start hashing it ahead of time.
    """
    path = path or _resolve_regular_file(boot, relative)
    signature_relative = relative + SIGNATURE_SUFFIX
    try:
        signature_path = _resolve_regular_file(boot, signature_relative)
    except BootRejected as error:
        if error.check != "missing":
            raise
        raise BootRejected(relative, "signature", f"unsigned: {signature_relative} not found") from None
    record = decode_signature_record(_read_small_file(signature_path, signature_relative, MAX_SIGNATURE_FILE_BYTES),
                                     signature_relative)
    certificate = check_signature_record(record, signature_relative, boot.state.allowed_algorithms)
    if record.file_name != path.name:
        raise BootRejected(signature_relative, "signature", f"signature was made for {record.file_name!r}, "
                                                            f"not {path.name!r}")
    scanned = pending_scan.result() if pending_scan is not None else scan_file(path)
    if scanned.sha256 != record.image_sha256:
        raise BootRejected(relative, "signature", f"SHA-256 {scanned.sha256.hex()} does not match the signed digest "
                                                  f"{record.image_sha256.hex()}; the file changed after signing")
    anchor = _check_trust(boot, relative, scanned, record, certificate, anchors)
    return scanned, record, certificate, anchor


def _check_trust(boot: _Boot, relative: str, scanned: ScannedFile, record: SignatureRecord,
                 certificate: x509.Certificate, anchors: list[TrustAnchor]) -> TrustAnchor:
    dbx = boot.state.dbx
    subject = certificate.subject.rfc4514_string()
    if dbx.contains_sha256(scanned.sha256):
        raise BootRejected(relative, "revoked-hash", f"image SHA-256 {scanned.sha256.hex()} is listed in dbx")
    if dbx.contains_certificate(record.signer_certificate_der):
        raise BootRejected(relative, "revoked-cert", f"signer certificate {subject!r} is listed in dbx")
    for anchor in anchors:
        if anchor.database.contains_certificate(record.signer_certificate_der):
            return anchor
    trusted = " or ".join(anchor.authority for anchor in anchors)
    raise BootRejected(relative, "untrusted-key", f"signed by {subject!r} ({record.algorithm}), which is not a "
                                                  f"{trusted} key trusted at this stage")


def _measure_authority(boot: _Boot, anchor: TrustAnchor, certificate_der: bytes) -> None:
    """Log each authority once per boot in PCR 7, as UEFI firmware logs a db entry on first use."""
    key = (anchor.variable_name, certificate_der)
    if key in boot.measured_authorities:
        return
    boot.measured_authorities.add(key)
    entry = anchor.database.find_certificate_entry(certificate_der)
    event_data = uefi_variable_data(anchor.variable_guid, anchor.variable_name, entry.encode())
    boot.log.measure(PCR_SECURE_BOOT_POLICY, EV_EFI_VARIABLE_AUTHORITY, event_data)


def _verify_image(boot: _Boot, relative: str, kind: str, anchors: list[TrustAnchor], path: Path | None = None,
                  pending_scan: Future[ScannedFile] | None = None) -> ImageMetadata:
    scanned, record, certificate, anchor = _verify_signed_file(boot, relative, anchors, path, pending_scan)
    try:
        metadata = decode_image_head(scanned.head, scanned.size_bytes)
    except ImageMalformed as error:
        raise BootRejected(relative, "format", f"invalid component image: {error}") from None
    if metadata.kind != kind:
        raise BootRejected(relative, "kind", f"image kind is {metadata.kind!r}, this stage loads a {kind!r}")
    rollback = find_rollback(metadata.sbat, boot.state.sbat_level)
    if rollback is not None:
        sbat_record, minimum = rollback
        raise BootRejected(relative, "rollback", f"SBAT component {sbat_record.component!r} generation "
                                                 f"{sbat_record.generation} is below the host's minimum {minimum}")
    _measure_authority(boot, anchor, record.signer_certificate_der)
    if kind == "module":
        boot.log.measure(PCR_MODULES, EV_IPL, (relative + "\x00").encode("utf-8"), scanned.sha256)
    else:
        boot.log.measure(PCR_BOOT_APPLICATIONS, EV_EFI_BOOT_SERVICES_APPLICATION,
                         uefi_image_load_event(scanned.size_bytes, relative), scanned.sha256)
    boot.components.append(VerifiedComponent(
        relative, kind, anchor.authority, certificate.subject.rfc4514_string(), record.algorithm, scanned.sha256,
        scanned.size_bytes, tuple((r.component, r.generation) for r in metadata.sbat)))
    return metadata


def _verify_modules(boot: _Boot, module_paths: list[str], anchors: list[TrustAnchor], hash_workers: int) -> None:
    """Verify modules in boot.cfg order while worker threads hash the next few files.

    Every listed path is resolved first, so a path that leaves the bank is reported before any
    module is read. Hashing runs ahead by at most HASH_LOOKAHEAD files, which bounds memory,
    and overlaps with the signature checks on this thread (hashlib and file reads release the GIL).
    """
    resolved = [_resolve_regular_file(boot, relative) for relative in module_paths]
    with ThreadPoolExecutor(max_workers=hash_workers, thread_name_prefix="bank-hash") as pool:
        scans: deque[Future[ScannedFile]] = deque()
        submitted = 0
        try:
            for relative, path in zip(module_paths, resolved):
                while submitted < len(resolved) and len(scans) < HASH_LOOKAHEAD:
                    scans.append(pool.submit(scan_file, resolved[submitted]))
                    submitted += 1
                _verify_image(boot, relative, "module", anchors, path, scans.popleft())
        finally:
            for scan in scans:
                scan.cancel()


def _verify_boot_config(boot: _Boot, anchors: list[TrustAnchor]) -> list[str]:
    scanned, record, certificate, anchor = _verify_signed_file(boot, BOOT_CONFIG, anchors)
    if scanned.size_bytes > MAX_BOOT_CONFIG_BYTES:
        raise BootRejected(BOOT_CONFIG, "format", f"boot.cfg is larger than {MAX_BOOT_CONFIG_BYTES} bytes")
    module_paths = decode_boot_config(scanned.head)
    _measure_authority(boot, anchor, record.signer_certificate_der)
    boot.log.measure(PCR_BOOT_CONFIG, EV_IPL, scanned.head, scanned.sha256)
    boot.components.append(VerifiedComponent(BOOT_CONFIG, "config", anchor.authority,
                                             certificate.subject.rfc4514_string(), record.algorithm, scanned.sha256,
                                             scanned.size_bytes))
    return module_paths


def decode_boot_config(data: bytes) -> list[str]:
    """Return the module paths boot.cfg lists, in load order."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BootRejected(BOOT_CONFIG, "format", "boot.cfg is not UTF-8") from None
    lines = text.split("\n")
    if lines[-1] != "" or lines[0] != BOOT_CONFIG_HEADER:
        raise BootRejected(BOOT_CONFIG, "format", f"boot.cfg must start with {BOOT_CONFIG_HEADER!r} and end with "
                                                  "a newline")
    paths: list[str] = []
    for number, line in enumerate(lines[1:-1], start=2):
        key, separator, value = line.partition("=")
        if key != "module" or not separator or not value:
            raise BootRejected(BOOT_CONFIG, "format", f"line {number} {line!r} is not 'module=PATH'")
        if value in paths:
            raise BootRejected(BOOT_CONFIG, "format", f"line {number} lists {value!r} a second time")
        paths.append(value)
    return paths


def _bank_entries(bank_root: Path) -> set[str]:
    entries = set()
    for directory, dir_names, file_names in os.walk(bank_root):
        relative_dir = Path(directory).relative_to(bank_root)
        for name in file_names + [d for d in dir_names if os.path.islink(os.path.join(directory, d))]:
            entries.add((relative_dir / name).as_posix())
    return entries


def _check_unlisted_files(bank_root: Path, module_paths: list[str]) -> None:
    listed = {*STAGE_FILES.values(), BOOT_CONFIG, *module_paths}
    expected = listed | {path + SIGNATURE_SUFFIX for path in listed}
    for entry in sorted(_bank_entries(bank_root) - expected):
        if entry.startswith(MODULES_DIR + "/"):
            hint = "add it to boot.cfg with a signature or remove it"
        else:
            hint = "remove it"
        raise BootRejected(entry, "unlisted", f"file is not part of the boot chain ({hint}); every file in a boot "
                                              "bank must be listed and signed")
