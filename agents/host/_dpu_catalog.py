"""The catalog of preinstalled DPU management OS images, and the choice of an image for a DPU.

The shipped catalog is `agents/data/dpu-images/catalog.json`: per image a name, the DPU model
it runs on, its version (major.minor.patch) and its file (a tar archive whose etc/os-release
carries VERSION_ID) with the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class CatalogError(Exception):
    """The catalog or an image file is unusable; fix the catalog directory."""


class ImageNotFound(Exception):
    """No catalog image fits the request; pick another --image or add one to the catalog."""

    def __init__(self, model: str, name: str, available: list[str]) -> None:
        self.model = model
        self.name = name
        self.available = available
        requested = f"image {name!r}" if name else "an image"
        super().__init__(f"no {requested} for DPU model {model!r} in the catalog; "
                         f"images for it: {', '.join(available) or 'none'}")


@dataclass(frozen=True)
class CatalogImage:
    name: str
    model: str
    version: str
    path: Path
    sha256: str

    @property
    def fw_version(self) -> int:
        """The FMP FwVersion of `version`: major in byte 3, minor in byte 2, patch in bytes 1..0."""
        return fw_version_of(self.version)

    def read(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"cannot read image {self.name} at {self.path}: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise CatalogError(f"image file {self.path} does not match the catalog's SHA-256 for {self.name}")
        return data


def fw_version_of(version: str) -> int:
    """Encode major.minor.patch as an FMP FwVersion (agents.redfish.format_fw_version decodes it)."""
    parts = version.split(".")
    try:
        major, minor, patch = (int(p) for p in parts)
    except ValueError:
        raise CatalogError(f"invalid version {version!r}: expected major.minor.patch") from None
    if not (0 <= major <= 0xFF and 0 <= minor <= 0xFF and 0 <= patch <= 0xFFFF):
        raise CatalogError(f"version {version!r} out of range: major and minor 0-255, patch 0-65535")
    return (major << 24) | (minor << 16) | patch


def default_catalog_dir() -> Path:
    return Path(str(resources.files("agents") / "data" / "dpu-images"))


def load_catalog(directory: Path | None = None) -> list[CatalogImage]:
    directory = directory or default_catalog_dir()
    path = directory / "catalog.json"
    try:
        entries = json.loads(path.read_text())["images"]
        images = [CatalogImage(e["name"], e["model"], e["version"], directory / e["file"], e["sha256"])
                  for e in entries]
    except FileNotFoundError:
        raise CatalogError(f"image catalog {path} not found") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatalogError(f"invalid image catalog {path}: {exc!r}") from None
    for image in images:
        fw_version_of(image.version)
    return images


def choose_image(catalog: list[CatalogImage], model: str, name: str = "") -> CatalogImage:
    """Return the image `name` if it fits `model`, or without a name the newest image for `model`."""
    fitting = [image for image in catalog if image.model == model]
    if name:
        for image in fitting:
            if image.name == name:
                return image
    elif fitting:
        return max(fitting, key=lambda image: image.fw_version)
    raise ImageNotFound(model, name, sorted(image.name for image in fitting))
