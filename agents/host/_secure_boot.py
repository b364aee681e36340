"""Paths of a cluster's secure boot material, and its provisioning by `dcfleet up`.

Layout under the cluster's state dir:
  keys/                               the four role keys, db.esl and dbx.esl (`init_keys`)
  golden/bank, golden/state           the golden boot bank and host state
  attestation/reference-manifest.json PCR values a host booted from the golden bank must quote
  attestation/hosts/<host>.crt.pem    each host's attestation certificate, as enrolled at provisioning
  hosts/<host>/bootbank/              the host's signed boot bank (executable namespace)
  hosts/<host>/secure-state/          the host's state namespace (db, dbx, SbatLevel, MokList, counters, AK)
  hosts/<host>/eventlog.bin           the TCG event log of the host's last successful boot
The cluster keeps its own copy of each attestation certificate so that a host whose key is
replaced later fails attestation instead of vouching for itself.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import agents.secureboot as sb
from agents._config import ConfigError
from agents.secureboot._statefs import AK_CERT_FILE, SBAT_LEVEL_FILE, write_atomic

GOLDEN_HOST_ID = "golden"


@dataclass(frozen=True)
class HostBootPaths:
    bank: Path
    state: Path
    event_log: Path


def host_boot_paths(state_dir: str | Path, host_id: str) -> HostBootPaths:
    root = Path(state_dir) / "hosts" / host_id
    return HostBootPaths(root / "bootbank", root / "secure-state", root / "eventlog.bin")


def keys_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "keys"


def golden_paths(state_dir: str | Path) -> tuple[Path, Path]:
    """Return the golden boot bank and golden host state of a cluster."""
    root = Path(state_dir) / "golden"
    return root / "bank", root / "state"


def reference_manifest_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "attestation" / "reference-manifest.json"


def attestation_certificate_path(state_dir: str | Path, host_id: str) -> Path:
    return Path(state_dir) / "attestation" / "hosts" / f"{host_id}.crt.pem"


def default_boot_sources() -> Path:
    """Return the shipped plain files of the loader, kernel, verifier and modules."""
    return Path(str(resources.files("agents") / "data" / "bootsrc"))


def load_or_init_keys(state_dir: str | Path) -> sb.KeySet:
    directory = keys_dir(state_dir)
    if (directory / "firmware.crt.pem").exists():
        return sb.load_keys(directory)
    return sb.init_keys(directory)


def prepare_secure_boot(state_dir: str | Path, host_ids: list[str], sources: Path | None = None) -> None:
    """Create the cluster keys, the golden bank and manifest, and each host's bank and state, where missing.

    Existing material is kept, so a state dir prepared (or altered) before `dcfleet up` boots as it is.
    Raises ConfigError when the existing material cannot be used.
    """
    try:
        _prepare(state_dir, host_ids, sources or default_boot_sources())
    except sb.SecureBootError as error:
        raise ConfigError(f"cannot prepare secure boot material in {state_dir}: {error}") from None


def _prepare(state_dir: str | Path, host_ids: list[str], sources: Path) -> None:
    keys = load_or_init_keys(state_dir)
    golden_bank, golden_state = golden_paths(state_dir)
    if not (golden_bank.exists() and golden_state.exists()):
        _remove_partial(golden_bank, golden_state)
        sb.provision_host_state(golden_state, keys, GOLDEN_HOST_ID)
        sb.build_image(sources, golden_bank, keys)
    manifest_path = reference_manifest_path(state_dir)
    if not manifest_path.exists():
        manifest = sb.compute_reference_manifest(golden_bank, golden_state)
        write_atomic(manifest_path, manifest.to_json().encode("utf-8"))
    for host_id in host_ids:
        _provision_host(state_dir, host_id, keys, sources, golden_state)


def _provision_host(state_dir: str | Path, host_id: str, keys: sb.KeySet, sources: Path, golden_state: Path) -> None:
    paths = host_boot_paths(state_dir, host_id)
    certificate = attestation_certificate_path(state_dir, host_id)
    if paths.bank.exists() and paths.state.exists() and certificate.exists():
        return
    _remove_partial(paths.bank, paths.state)
    sb.provision_host_state(paths.state, keys, host_id)
    # SbatLevel carries its creation date and is measured into PCR 7. A host provisioned on another
    # day than the golden state would never match the manifest, so it starts from the golden level.
    write_atomic(paths.state / SBAT_LEVEL_FILE, (golden_state / SBAT_LEVEL_FILE).read_bytes())
    sb.build_image(sources, paths.bank, keys)
    certificate.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.state / AK_CERT_FILE, certificate)


def _remove_partial(*directories: Path) -> None:
    """Remove what an interrupted provisioning left, so the library can build into empty directories."""
    for directory in directories:
        if directory.exists():
            shutil.rmtree(directory)
