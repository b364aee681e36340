"""Boot chain verification over a boot bank on disk (pure: files in, report out).

A firmware key verifies the boot loader; the key embedded in the signed loader
verifies the kernel and the secure boot verifier; the keys embedded in the
signed verifier verify every module. Each component is a container
(`DCFIMG1\\0`, a msgpack header, the payload) with an Ed25519 signature over
the whole container in `<file>.sig`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAGIC = b"DCFIMG1\0"
LOADER = "loader.efi"
KERNEL = "kernel"
VERIFIER = "verifier"
MODULES_DIR = "modules"


class BootFailure(Exception):
    """A component failed a boot check; the host must not enter service."""

    def __init__(self, file: str, check: str, reason: str) -> None:
        self.file = file
        self.check = check
        self.reason = reason
        super().__init__(f"{file}: {check} check failed: {reason}")


@dataclass(frozen=True)
class Component:
    file: str
    name: str
    role: str
    trusts: dict[str, bytes]
    payload: bytes


def raw_public_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def pack_component(name: str, role: str, payload: bytes, trusts: dict[str, bytes] | None = None) -> bytes:
    header = msgpack.packb({"name": name, "role": role, "trusts": trusts or {}}, use_bin_type=True)
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def write_signed(path: Path, container: bytes, key: Ed25519PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(container)
    path.with_name(path.name + ".sig").write_bytes(key.sign(container))


def _read_component(bank: Path, relative: str, expected_role: str, key: bytes) -> Component:
    path = bank / relative
    try:
        container = path.read_bytes()
    except FileNotFoundError:
        raise BootFailure(relative, "presence", "file missing") from None
    try:
        signature = path.with_name(path.name + ".sig").read_bytes()
    except FileNotFoundError:
        raise BootFailure(relative, "signature", "signature file missing") from None
    if len(signature) != 64:
        raise BootFailure(relative, "signature", f"signature is {len(signature)} bytes, Ed25519 needs 64")
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, container)
    except InvalidSignature:
        raise BootFailure(relative, "signature", "signature does not verify with the trusted key") from None
    except ValueError as exc:
        raise BootFailure(relative, "key", f"trusted key unusable: {exc}") from None
    return _parse_container(relative, container, expected_role)


def _parse_container(relative: str, container: bytes, expected_role: str) -> Component:
    if not container.startswith(MAGIC) or len(container) < len(MAGIC) + 4:
        raise BootFailure(relative, "format", "not a dcfleet boot image")
    (header_len,) = struct.unpack_from("<I", container, len(MAGIC))
    start = len(MAGIC) + 4
    if start + header_len > len(container):
        raise BootFailure(relative, "format", "header runs past the end of the file")
    try:
        header = msgpack.unpackb(container[start : start + header_len], raw=False)
        name, role, trusts = header["name"], header["role"], header["trusts"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise BootFailure(relative, "format", f"invalid header: {exc}") from None
    if role != expected_role:
        raise BootFailure(relative, "role", f"image role is {role!r}, expected {expected_role!r}")
    return Component(relative, name, role, dict(trusts), container[start + header_len :])


def verify_bank(bank: Path, firmware_key: bytes) -> list[Component]:
    """Verify every component of a boot bank in boot order, or raise BootFailure."""
    loader = _read_component(bank, LOADER, "loader", firmware_key)
    loader_key = loader.trusts.get("kernel")
    if loader_key is None:
        raise BootFailure(LOADER, "format", "loader embeds no key for the kernel")
    kernel = _read_component(bank, KERNEL, "kernel", loader_key)
    verifier = _read_component(bank, VERIFIER, "verifier", loader_key)
    module_key = verifier.trusts.get("module")
    if module_key is None:
        raise BootFailure(VERIFIER, "format", "verifier embeds no key for modules")
    components = [loader, kernel, verifier]
    modules_dir = bank / MODULES_DIR
    if modules_dir.is_dir():
        for path in sorted(modules_dir.glob("*.mod")):
            relative = f"{MODULES_DIR}/{path.name}"
            components.append(_read_component(bank, relative, "module", module_key))
    return components


@dataclass(frozen=True)
class BootKeys:
    firmware: Ed25519PrivateKey
    loader: Ed25519PrivateKey
    vendor: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> "BootKeys":
        return cls(Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate())


def build_bank(bank: Path, keys: BootKeys, modules: dict[str, bytes]) -> None:
    """Write a signed boot bank: loader, kernel, verifier and the given modules."""
    loader = pack_component("loader", "loader", b"dcfleet boot loader", {"kernel": raw_public_key(keys.loader)})
    write_signed(bank / LOADER, loader, keys.firmware)
    write_signed(bank / KERNEL, pack_component("kernel", "kernel", b"dcfleet hypervisor kernel"), keys.loader)
    verifier = pack_component("verifier", "verifier", b"dcfleet secure boot verifier", {"module": raw_public_key(keys.vendor)})
    write_signed(bank / VERIFIER, verifier, keys.loader)
    for name, payload in modules.items():
        write_signed(bank / MODULES_DIR / f"{name}.mod", pack_component(name, "module", payload), keys.vendor)
