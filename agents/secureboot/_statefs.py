"""The host state namespace: configuration, firmware variables, owner keys and counters.

Layout under the state root, a directory tree apart from every boot bank:
  config.json             host_id, firmware_version, allowed_algorithms
  counters.json           boot_count, owner_request_counter
  nvram/db.esl            firmware db (EFI signature database)
  nvram/dbx.esl           firmware dbx (EFI signature database, may be empty)
  nvram/SbatLevel         minimum component generations (shim's SbatLevel text)
  owner/MokList.esl       machine owner keys (EFI signature database)
  owner/pending/*.json    owner key enrollment requests waiting for the next boot
  attestation/ak.*.pem    the host's attestation key (0600) and certificate
Nothing here is ever loaded as a module: `resolve_bank_path` rejects any bank path that
resolves into this tree, and `check_namespaces_disjoint` rejects a bank that overlaps it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agents.secureboot._errors import BootRejected, InvalidInput
from agents.secureboot._keys import (
    ALGORITHM_ED25519,
    ALGORITHMS,
    KeyPair,
    KeySet,
    algorithm_of_key,
    generate_key_pair,
    load_certificate_pem,
    load_private_key_pem,
    write_certificate,
    write_private_key,
)
from agents.secureboot._sbat import SbatLevel, SbatMalformed, check_component_name, decode_sbat_level, encode_sbat_level
from agents.secureboot._sigdb import SignatureDatabase, SignatureDatabaseMalformed, decode_signature_database

CONFIG_FILE = "config.json"
COUNTERS_FILE = "counters.json"
DB_FILE = "nvram/db.esl"
DBX_FILE = "nvram/dbx.esl"
SBAT_LEVEL_FILE = "nvram/SbatLevel"
OWNER_KEYS_FILE = "owner/MokList.esl"
PENDING_DIR = "owner/pending"
AK_KEY_FILE = "attestation/ak.key.pem"
AK_CERT_FILE = "attestation/ak.crt.pem"

MAX_STATE_FILE_BYTES = 1024 * 1024
_STATE_FORMAT = "dcfleet-host-state"


@dataclass
class HostState:
    """The loaded state of one host; `raw` keeps the variable bytes exactly as stored, for measuring."""

    root: Path
    host_id: str
    firmware_version: str
    allowed_algorithms: tuple[str, ...]
    db: SignatureDatabase
    dbx: SignatureDatabase
    sbat_level: SbatLevel
    owner_keys: SignatureDatabase
    boot_count: int
    owner_request_counter: int
    raw: dict[str, bytes] = field(default_factory=dict)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a reader sees the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def _json_bytes(document: dict) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")


def provision_host_state(state_dir: str | Path, keys: KeySet, host_id: str, *,
                         firmware_version: str = "dcfleet-firmware 1.0",
                         allowed_algorithms: tuple[str, ...] = ALGORITHMS,
                         attestation_algorithm: str = ALGORITHM_ED25519,
                         dbx: SignatureDatabase | None = None) -> HostState:
    """Create a host's state tree: db with the firmware certificate, MokList with the owner
    certificate, an empty or given dbx, an empty SbatLevel, zero counters and a new attestation key."""
    root = Path(state_dir)
    _check_provision_arguments(root, host_id, allowed_algorithms)
    db = SignatureDatabase()
    db.add_certificate(keys.firmware.certificate_der)
    owner_keys = SignatureDatabase()
    owner_keys.add_certificate(keys.owner.certificate_der)
    config = {"format": _STATE_FORMAT, "version": 1, "host_id": host_id, "firmware_version": firmware_version,
              "allowed_algorithms": list(allowed_algorithms)}
    write_atomic(root / CONFIG_FILE, _json_bytes(config))
    write_atomic(root / COUNTERS_FILE, _json_bytes({"boot_count": 0, "owner_request_counter": 0}))
    write_atomic(root / DB_FILE, db.encode())
    write_atomic(root / DBX_FILE, (dbx or SignatureDatabase()).encode())
    write_atomic(root / SBAT_LEVEL_FILE, encode_sbat_level(SbatLevel(time.strftime("%Y%m%d00"), {})))
    write_atomic(root / OWNER_KEYS_FILE, owner_keys.encode())
    (root / PENDING_DIR).mkdir(parents=True, exist_ok=True)
    attestation_key = generate_key_pair("attestation", attestation_algorithm, f"dcfleet attestation key {host_id}")
    (root / AK_KEY_FILE).parent.mkdir(parents=True, exist_ok=True)
    write_private_key(root / AK_KEY_FILE, attestation_key.private_key)
    write_certificate(root / AK_CERT_FILE, attestation_key.certificate)
    return load_host_state(root)


def _check_provision_arguments(root: Path, host_id: str, allowed_algorithms: tuple[str, ...]) -> None:
    if root.exists() and any(root.iterdir()):
        raise InvalidInput(str(root), "state directory is not empty; provision into a new directory")
    if not host_id or len(host_id) > 128 or not host_id.isprintable():
        raise InvalidInput("host_id", f"{host_id!r} must be 1-128 printable characters")
    unknown = [name for name in allowed_algorithms if name not in ALGORITHMS]
    if unknown or not allowed_algorithms:
        raise InvalidInput("allowed_algorithms", f"{list(allowed_algorithms)} must be a non-empty subset of {list(ALGORITHMS)}")


def read_state_file(root: Path, relative: str) -> bytes:
    path = root / relative
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_STATE_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BootRejected(path, "missing", "host state file not found") from None
    except IsADirectoryError:
        raise BootRejected(path, "format", "host state path is a directory, expected a file") from None
    if len(data) > MAX_STATE_FILE_BYTES:
        raise BootRejected(path, "format", f"host state file is larger than {MAX_STATE_FILE_BYTES} bytes")
    return data


def _read_json(root: Path, relative: str, required: dict[str, type]) -> dict:
    path = root / relative
    try:
        document = json.loads(read_state_file(root, relative).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BootRejected(path, "format", f"not valid UTF-8 JSON ({error})") from None
    if not isinstance(document, dict):
        raise BootRejected(path, "format", "not a JSON object")
    for name, kind in required.items():
        value = document.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BootRejected(path, "format", f"field {name!r} is missing or not of type {kind.__name__}")
    return document


def _read_database(root: Path, relative: str) -> tuple[SignatureDatabase, bytes]:
    data = read_state_file(root, relative)
    try:
        return decode_signature_database(data), data
    except SignatureDatabaseMalformed as error:
        raise BootRejected(root / relative, "format", str(error)) from None


def load_host_state(state_dir: str | Path) -> HostState:
    """Read and validate every state file; any problem raises BootRejected naming the file."""
    root = Path(os.path.realpath(state_dir))
    if not root.is_dir():
        raise BootRejected(root, "missing", "host state directory not found")
    config = _read_json(root, CONFIG_FILE, {"host_id": str, "firmware_version": str, "allowed_algorithms": list})
    if config.get("format") != _STATE_FORMAT or config.get("version") != 1:
        raise BootRejected(root / CONFIG_FILE, "format", f"expected format {_STATE_FORMAT!r} version 1")
    allowed = tuple(config["allowed_algorithms"])
    if not allowed or any(name not in ALGORITHMS for name in allowed):
        raise BootRejected(root / CONFIG_FILE, "algorithm", f"allowed_algorithms {list(allowed)} must be a "
                                                            f"non-empty subset of {list(ALGORITHMS)}")
    counters = _read_json(root, COUNTERS_FILE, {"boot_count": int, "owner_request_counter": int})
    db, db_raw = _read_database(root, DB_FILE)
    dbx, dbx_raw = _read_database(root, DBX_FILE)
    owner_keys, owner_raw = _read_database(root, OWNER_KEYS_FILE)
    sbat_raw = read_state_file(root, SBAT_LEVEL_FILE)
    try:
        sbat_level = decode_sbat_level(sbat_raw)
    except SbatMalformed as error:
        raise BootRejected(root / SBAT_LEVEL_FILE, "format", str(error)) from None
    raw = {"db": db_raw, "dbx": dbx_raw, "MokList": owner_raw, "SbatLevel": sbat_raw}
    return HostState(root, config["host_id"], config["firmware_version"], allowed, db, dbx, sbat_level, owner_keys,
                     counters["boot_count"], counters["owner_request_counter"], raw)


def write_counters(state: HostState) -> None:
    counters = {"boot_count": state.boot_count, "owner_request_counter": state.owner_request_counter}
    write_atomic(state.root / COUNTERS_FILE, _json_bytes(counters))


def revoke_image_hash(state_dir: str | Path, image_sha256: bytes) -> None:
    """Add an image digest to dbx; the host rejects that image from its next boot on."""
    if len(image_sha256) != 32:
        raise InvalidInput("image_sha256", f"{len(image_sha256)} bytes, a SHA-256 digest has 32")
    state = load_host_state(state_dir)
    state.dbx.add_sha256(image_sha256)
    write_atomic(state.root / DBX_FILE, state.dbx.encode())


def revoke_certificate(state_dir: str | Path, certificate: x509.Certificate) -> None:
    """Add a certificate to dbx; everything it signed is rejected from the next boot on."""
    state = load_host_state(state_dir)
    state.dbx.add_certificate(certificate.public_bytes(serialization.Encoding.DER))
    write_atomic(state.root / DBX_FILE, state.dbx.encode())


def raise_sbat_level(state_dir: str | Path, component: str, minimum_generation: int) -> None:
    """Raise a component's minimum generation; lowering it is rejected because it would undo a revocation."""
    try:
        check_component_name(component)
    except ValueError as error:
        raise InvalidInput("component", str(error)) from None
    state = load_host_state(state_dir)
    current = state.sbat_level.minimum_generations.get(component, 0)
    if minimum_generation < current or minimum_generation < 1:
        raise InvalidInput("minimum_generation", f"{minimum_generation} is below the current level {current} of "
                                                 f"{component!r}; SbatLevel only goes up")
    levels = dict(state.sbat_level.minimum_generations, **{component: minimum_generation})
    level = SbatLevel(time.strftime("%Y%m%d00"), levels)
    write_atomic(state.root / SBAT_LEVEL_FILE, encode_sbat_level(level))


def load_attestation_key(state_dir: str | Path) -> KeyPair:
    root = Path(state_dir)
    certificate = load_certificate_pem(root / AK_CERT_FILE)
    private_key = load_private_key_pem(root / AK_KEY_FILE)
    return KeyPair("attestation", algorithm_of_key(certificate.public_key()), certificate, private_key)


def is_within(path: Path, root: Path) -> bool:
    """Return whether `path` is `root` or below it; both must already be resolved."""
    path_text, root_text = str(path), str(root)
    return path_text == root_text or path_text.startswith(root_text.rstrip(os.sep) + os.sep)


def check_namespaces_disjoint(bank_root: Path, state_root: Path) -> None:
    if is_within(bank_root, state_root) or is_within(state_root, bank_root):
        raise BootRejected(bank_root, "state-namespace", f"boot bank and host state namespace {state_root} overlap")


def resolve_bank_path(bank_root: Path, relative: str, state_root: Path) -> Path:
    """Resolve a path listed in a boot bank, rejecting any that leaves the bank.

    Symlinks and `..` are resolved first, so a path that reaches the state namespace by
    either route is reported as a state-namespace violation.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        raise BootRejected(relative or "(empty path)", "path", "path is empty or contains NUL or '\\'")
    if os.path.isabs(relative):
        raise BootRejected(relative, "path", "absolute paths are not allowed in a boot bank")
    resolved = Path(os.path.realpath(bank_root / relative))
    if is_within(resolved, state_root):
        raise BootRejected(relative, "state-namespace", f"resolves to {resolved}, inside the host state namespace "
                                                        f"{state_root}; state files are never loaded")
    if not is_within(resolved, bank_root):
        raise BootRejected(relative, "path", f"resolves to {resolved}, outside the boot bank {bank_root}")
    if any(part in ("..", ".") for part in relative.split("/")) or "//" in relative:
        raise BootRejected(relative, "path", "path is not normalized ('.', '..' or '//')")
    return resolved
