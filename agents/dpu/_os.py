"""A DPU's management OS: what is installed, the checks an update must pass, and the A/B slots on disk.

Each DPU keeps two slots under `<state dir>/dpus/<dpu>/`: `slot-a.img` and `slot-b.img`.
An update is written to the slot that is not running and becomes the installed OS only when
`os.json` is replaced after the new OS booted, so a failure at any step leaves the previous OS
installed and running.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509

from agents import capsule
from agents.redfish import format_fw_version

from .._capsule_keys import FACTORY_MONOTONIC_COUNT
from .._config import ConfigError

FACTORY_OS = {"version": "1.0.0", "fw_version": 0x0100_0000, "image": "factory", "slot": "a",
              "monotonic_count": FACTORY_MONOTONIC_COUNT}
OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")


class InstallRejected(Exception):
    """An image failed a check; the installed OS stays. `check` names the check that failed."""

    def __init__(self, check: str, reason: str) -> None:
        self.check = check
        self.reason = reason
        super().__init__(f"{check}: {reason}")


@dataclass(frozen=True)
class InstalledOs:
    version: str
    fw_version: int
    monotonic_count: int
    image: str
    slot: str
    # The installed image's FMP LowestSupportedVersion: older images are refused.
    lowest_supported_version: int = 0

    @property
    def other_slot(self) -> str:
        return "b" if self.slot == "a" else "a"


# ---- checks (no I/O) -------------------------------------------------------------


def check_capsule(data: bytes, installed: InstalledOs, trusted_cert: x509.Certificate,
                  image_type_id: uuid.UUID = capsule.DPU_MGMT_OS_IMAGE_TYPE_ID) -> capsule.FmpCapsule:
    """Decode and verify a capsule for this DPU: format, image type, signature, no rollback."""
    try:
        decoded = capsule.decode_capsule(data)
    except capsule.CapsuleMalformed as exc:
        raise InstallRejected("format", str(exc)) from None
    if decoded.update_image_type_id != image_type_id:
        raise InstallRejected("image-type", f"UpdateImageTypeId {decoded.update_image_type_id} is not a "
                              f"DPU management OS image ({image_type_id})")
    try:
        capsule.verify_capsule(decoded, trusted_cert)
    except capsule.SignatureRejected as exc:
        raise InstallRejected("signature", str(exc)) from None
    if decoded.monotonic_count <= installed.monotonic_count:
        raise InstallRejected("monotonic-count", f"MonotonicCount {decoded.monotonic_count} is not above the "
                              f"installed {installed.monotonic_count}")
    if decoded.fw_version < installed.lowest_supported_version:
        raise InstallRejected("version", f"FwVersion {format_fw_version(decoded.fw_version)} is below the "
                              f"installed OS's LowestSupportedVersion "
                              f"{format_fw_version(installed.lowest_supported_version)}")
    return decoded


def read_os_release(image: bytes) -> dict[str, str]:
    """Parse the os-release file of an OS image (a tar archive), as the DPU's boot loader would."""
    try:
        with tarfile.open(fileobj=io.BytesIO(image), mode="r:*") as archive:
            for name in OS_RELEASE_PATHS:
                try:
                    member = archive.getmember(name)
                except KeyError:
                    continue
                extracted = archive.extractfile(member)
                if extracted is not None:
                    return parse_os_release(extracted.read().decode("utf-8", errors="replace"))
    except tarfile.TarError as exc:
        raise InstallRejected("boot", f"the image is not a readable OS archive: {exc}") from None
    raise InstallRejected("boot", "the image has no etc/os-release")


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release(5) KEY=value lines; quotes around a value are removed."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            fields[key] = value.strip().strip("\"'")
    return fields


def boot_version(image: bytes, fw_version: int) -> str:
    """Return the version the booted image reports; it must match the capsule's FwVersion."""
    expected = format_fw_version(fw_version)
    reported = read_os_release(image).get("VERSION_ID", "")
    if reported != expected:
        raise InstallRejected("boot", f"the booted OS reports VERSION_ID {reported!r}, "
                              f"but the capsule's FwVersion is {expected}")
    return expected


# ---- files -----------------------------------------------------------------------


class OsStore:
    """The installed-OS record and the two image slots of one DPU."""

    def __init__(self, state_dir: str | Path, dpu_id: str) -> None:
        self.root = Path(state_dir) / "dpus" / dpu_id
        self.incoming = self.root / "incoming"

    @property
    def record(self) -> Path:
        return self.root / "os.json"

    def slot(self, name: str) -> Path:
        return self.root / f"slot-{name}.img"

    def load(self) -> InstalledOs:
        """Return the installed OS, or the factory OS when nothing was installed yet.

        An unreadable record raises ConfigError instead of falling back to the factory OS, whose
        lower MonotonicCount would let an older capsule in.
        """
        try:
            return InstalledOs(**json.loads(self.record.read_text()))
        except FileNotFoundError:
            return InstalledOs(**FACTORY_OS)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid installed-OS record {self.record}: {exc}") from None

    def write_slot(self, name: str, image: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.slot(name)
        with open(path, "wb") as file:
            file.write(image)
            file.flush()
            os.fsync(file.fileno())

    def commit(self, installed: InstalledOs) -> None:
        """Make `installed` the OS the DPU runs, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(installed)) + "\n")
        os.replace(tmp, self.record)
