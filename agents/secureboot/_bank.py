"""Boot banks: build a directory of signed component images from plain files.

Bank layout, relative to the bank root:
  loader.img, loader.img.sig       boot loader, signed by the firmware key (in db)
  kernel.img, kernel.img.sig       kernel, signed by the loader key
  verifier.img, verifier.img.sig   secure boot verifier, signed by the loader key
  boot.cfg, boot.cfg.sig           module list, signed by the vendor or the owner key
  modules/NAME.img, .sig           modules, signed by the vendor or the owner key
boot.cfg is `format=dcfleet-boot-cfg 1` followed by one `module=PATH` line per module,
in load order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agents.secureboot._errors import InvalidInput
from agents.secureboot._image import scan_file, write_image
from agents.secureboot._keys import KeyPair, KeySet
from agents.secureboot._sbat import SbatRecord, check_component_name
from agents.secureboot._sigdb import SignatureDatabase
from agents.secureboot._signature import SIGNATURE_SUFFIX, sign_digest

STAGE_FILES = {"loader": "loader.img", "kernel": "kernel.img", "verifier": "verifier.img"}
BOOT_CONFIG = "boot.cfg"
MODULES_DIR = "modules"
BOOT_CONFIG_HEADER = "format=dcfleet-boot-cfg 1"


@dataclass(frozen=True)
class BankFile:
    """One signed file written into a bank."""

    path: str
    kind: str
    component: str
    generation: int
    signer_role: str
    sha256: bytes
    size_bytes: int


@dataclass(frozen=True)
class BankBuild:
    bank_dir: Path
    files: list[BankFile]


def encode_boot_config(module_paths: list[str]) -> bytes:
    return ("\n".join([BOOT_CONFIG_HEADER] + [f"module={path}" for path in module_paths]) + "\n").encode("utf-8")


def write_signed_file(bank_dir: Path, relative: str, data: bytes, key: KeyPair) -> bytes:
    """Write a small file and its signature; return its SHA-256."""
    path = bank_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    digest = hashlib.sha256(data).digest()
    (bank_dir / (relative + SIGNATURE_SUFFIX)).write_bytes(sign_digest(key, Path(relative).name, digest))
    return digest


def write_boot_config(bank_dir: str | Path, module_paths: list[str], key: KeyPair) -> BankFile:
    """Write boot.cfg listing `module_paths` (relative to the bank) and sign it with `key`."""
    data = encode_boot_config(module_paths)
    digest = write_signed_file(Path(bank_dir), BOOT_CONFIG, data, key)
    return BankFile(BOOT_CONFIG, "config", BOOT_CONFIG, 0, key.role, digest, len(data))


def sign_component(bank_dir: Path, relative: str, kind: str, source: Path, key: KeyPair, component: str,
                   generation: int, certdb: SignatureDatabase | None = None) -> BankFile:
    """Write `source` as a component image at `relative` in the bank and sign it with `key`."""
    destination = bank_dir / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    sbat = [SbatRecord(component, generation, "dcfleet", component, str(generation), "")]
    scanned = write_image(destination, kind, source, sbat, certdb)
    signature = sign_digest(key, destination.name, scanned.sha256)
    (bank_dir / (relative + SIGNATURE_SUFFIX)).write_bytes(signature)
    return BankFile(relative, kind, component, generation, key.role, scanned.sha256, scanned.size_bytes)


def _single_cert_database(key: KeyPair) -> SignatureDatabase:
    database = SignatureDatabase()
    database.add_certificate(key.certificate_der)
    return database


def build_image(src_dir: str | Path, bank_dir: str | Path, keys: KeySet, *,
                generations: dict[str, int] | None = None, owner_modules: set[str] | frozenset[str] = frozenset()
                ) -> BankBuild:
    """Build a signed boot bank from plain files.

    `src_dir` contains the files `loader`, `kernel` and `verifier` and optionally a `modules/`
    directory of module files. Each module NAME becomes `modules/NAME.img` with SBAT
    component NAME. `generations` sets SBAT generations by component (default 1), and
    modules named in `owner_modules` are signed with the owner key instead of the vendor key.
    """
    src, bank = Path(src_dir), Path(bank_dir)
    generations = dict(generations or {})
    module_sources = _check_build_inputs(src, bank, generations, set(owner_modules))
    bank.mkdir(parents=True, exist_ok=True)
    files = [
        sign_component(bank, STAGE_FILES["loader"], "loader", src / "loader", keys.firmware, "loader",
                       generations.get("loader", 1), _single_cert_database(keys.loader)),
        sign_component(bank, STAGE_FILES["kernel"], "kernel", src / "kernel", keys.loader, "kernel",
                       generations.get("kernel", 1)),
        sign_component(bank, STAGE_FILES["verifier"], "verifier", src / "verifier", keys.loader, "verifier",
                       generations.get("verifier", 1), _single_cert_database(keys.vendor)),
    ]
    module_paths = []
    for source in module_sources:
        relative = f"{MODULES_DIR}/{source.name}.img"
        key = keys.owner if source.name in owner_modules else keys.vendor
        files.append(sign_component(bank, relative, "module", source, key, source.name,
                                    generations.get(source.name, 1)))
        module_paths.append(relative)
    files.append(write_boot_config(bank, module_paths, keys.vendor))
    return BankBuild(bank, files)


def _check_build_inputs(src: Path, bank: Path, generations: dict[str, int], owner_modules: set[str]) -> list[Path]:
    for name in STAGE_FILES:
        if not (src / name).is_file():
            raise InvalidInput(str(src / name), f"missing; a boot bank source needs the files {', '.join(STAGE_FILES)}")
    if bank.exists() and any(bank.iterdir()):
        raise InvalidInput(str(bank), "boot bank directory is not empty; build into a new directory")
    modules_dir = src / MODULES_DIR
    sources = sorted(p for p in modules_dir.iterdir()) if modules_dir.is_dir() else []
    for source in sources:
        _check_module_source(source)
    names = {p.name for p in sources}
    unknown_owner = sorted(owner_modules - names)
    if unknown_owner:
        raise InvalidInput("owner_modules", f"{unknown_owner} are not files in {modules_dir}")
    for component, generation in generations.items():
        if component not in names and component not in STAGE_FILES:
            raise InvalidInput("generations", f"component {component!r} is not a stage or a module of this bank")
        if not isinstance(generation, int) or not 1 <= generation < 2**32:
            raise InvalidInput("generations", f"generation {generation!r} of {component!r} must be from 1 to 2**32-1")
    return sources


def _check_module_source(source: Path) -> None:
    if not source.is_file() or source.is_symlink():
        raise InvalidInput(str(source), "module sources must be regular files")
    if source.name in STAGE_FILES:
        raise InvalidInput(str(source), f"module name {source.name!r} is reserved for a boot stage")
    try:
        check_component_name(source.name)
    except ValueError as error:
        raise InvalidInput(str(source), str(error)) from None


def add_owner_module(bank_dir: str | Path, source: str | Path, owner_key: KeyPair, *, generation: int = 1,
                     module_paths: list[str]) -> BankFile:
    """Sign a module with the owner key, add it to the bank, and re-sign boot.cfg with the owner key.

    `module_paths` is the bank's current module list (from `BootReport.module_paths`).
    """
    bank, source = Path(bank_dir), Path(source)
    _check_module_source(source)
    relative = f"{MODULES_DIR}/{source.name}.img"
    if relative in module_paths:
        raise InvalidInput(str(source), f"{relative} is already listed in boot.cfg")
    added = sign_component(bank, relative, "module", source, owner_key, source.name, generation)
    write_boot_config(bank, [*module_paths, relative], owner_key)
    return added


def sign_bank_file(bank_dir: str | Path, relative: str, key: KeyPair) -> bytes:
    """Sign an existing bank file with `key`, replacing its signature file; return the file's SHA-256."""
    path = Path(bank_dir) / relative
    if not path.is_file():
        raise InvalidInput(str(path), "file not found in the boot bank")
    digest = scan_file(path).sha256
    (Path(bank_dir) / (relative + SIGNATURE_SUFFIX)).write_bytes(sign_digest(key, path.name, digest))
    return digest
