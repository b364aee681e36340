"""SBAT generation numbers: the `.sbat` section of an image and the host's SbatLevel.

Both follow shim's SBAT format. An image's `.sbat` section is CSV, one record per line:
component_name,component_generation,vendor_name,vendor_package_name,vendor_version,vendor_url.
Its first record is `sbat,1,...`, the SBAT format version. The host's SbatLevel is
`sbat,1,DATESTAMP` followed by `component_name,minimum_generation` lines. An image is rejected
when one of its records names a component listed in SbatLevel with a lower generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SBAT_HEADER_RECORD = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"
MAX_GENERATION = 2**32 - 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_GENERATION = re.compile(r"[0-9]{1,10}")


class SbatMalformed(ValueError):
    """SBAT or SbatLevel text that does not parse; `line` is 1-based."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}")


@dataclass(frozen=True)
class SbatRecord:
    component: str
    generation: int
    vendor: str = ""
    package: str = ""
    version: str = ""
    url: str = ""


@dataclass(frozen=True)
class SbatLevel:
    """Minimum generation per component, with shim's datestamp of the revocation list."""

    datestamp: str
    minimum_generations: dict[str, int]


def check_component_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"component name {name!r} must be 1-64 letters, digits, '.', '_', '+' or '-'")
    return name


def _parse_generation(text: str, line: int) -> int:
    if not _GENERATION.fullmatch(text) or not 1 <= int(text) <= MAX_GENERATION:
        raise SbatMalformed(line, f"generation {text!r} is not an integer from 1 to {MAX_GENERATION}")
    return int(text)


def _lines(text: str) -> list[str]:
    if not text.endswith("\n"):
        raise SbatMalformed(text.count("\n") + 1, "text must end with a newline")
    return text[:-1].split("\n")


def encode_sbat_section(records: list[SbatRecord]) -> bytes:
    lines = [SBAT_HEADER_RECORD]
    for record in records:
        check_component_name(record.component)
        fields = [record.component, str(record.generation), record.vendor, record.package, record.version, record.url]
        if any("," in f or "\n" in f for f in fields):
            raise ValueError(f"SBAT fields of {record.component!r} must not contain ',' or newlines")
        lines.append(",".join(fields))
    return ("\n".join(lines) + "\n").encode("ascii")


def decode_sbat_section(data: bytes) -> list[SbatRecord]:
    """Return the component records of a `.sbat` section, without the `sbat` header record."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise SbatMalformed(1, "SBAT section is not ASCII") from None
    lines = _lines(text)
    if not lines[0].startswith("sbat,1,"):
        raise SbatMalformed(1, "first record must be the SBAT version record 'sbat,1,...'")
    records = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) < 2 or not _NAME.fullmatch(fields[0]):
            raise SbatMalformed(number, f"record {line!r} must start with a component name and a generation")
        records.append(SbatRecord(fields[0], _parse_generation(fields[1], number), *fields[2:6]))
    if not records:
        raise SbatMalformed(1, "SBAT section lists no component")
    return records


def encode_sbat_level(level: SbatLevel) -> bytes:
    lines = [f"sbat,1,{level.datestamp}"]
    for component, generation in sorted(level.minimum_generations.items()):
        lines.append(f"{check_component_name(component)},{generation}")
    return ("\n".join(lines) + "\n").encode("ascii")


def decode_sbat_level(data: bytes) -> SbatLevel:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise SbatMalformed(1, "SbatLevel is not ASCII") from None
    lines = _lines(text)
    header = lines[0].split(",")
    if len(header) != 3 or header[:2] != ["sbat", "1"] or not header[2].isdigit():
        raise SbatMalformed(1, f"first line {lines[0]!r} must be 'sbat,1,DATESTAMP'")
    minimum: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != 2 or not _NAME.fullmatch(fields[0]):
            raise SbatMalformed(number, f"line {line!r} must be 'component_name,generation'")
        if fields[0] in minimum:
            raise SbatMalformed(number, f"component {fields[0]!r} is listed twice")
        minimum[fields[0]] = _parse_generation(fields[1], number)
    return SbatLevel(header[2], minimum)


def find_rollback(records: list[SbatRecord], level: SbatLevel) -> tuple[SbatRecord, int] | None:
    """Return the first record below its minimum generation, with that minimum, or None."""
    for record in records:
        minimum = level.minimum_generations.get(record.component)
        if minimum is not None and record.generation < minimum:
            return record, minimum
    return None
