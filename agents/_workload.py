"""PlanetLab-format workload traces: one VM per file, one CPU percentage per line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Sizes of the PlanetLab VM types (MIPS, memory in MB) used by CloudSim's
# PlanetLab examples; VMs take them in turn.
VM_TYPES_MIPS = (2500, 2000, 1000, 500)


class TraceError(ValueError):
    """A trace file or directory that cannot be used; names the file and line."""

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class VmTrace:
    name: str
    path: Path
    utilization_pct: tuple[int, ...]


def read_trace(path: Path) -> VmTrace:
    """Read one trace file: an integer CPU utilization from 0 to 100 per line."""
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise TraceError(path, "not an ASCII text file") from None
    except OSError as exc:
        raise TraceError(path, f"cannot read: {exc.strerror}") from None
    values: list[int] = []
    blank_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            blank_line = blank_line or number
            continue
        if blank_line:
            # A gap would shift every later sample by one 300 s step.
            raise TraceError(path, "blank line inside the trace", blank_line)
        try:
            value = int(stripped)
        except ValueError:
            raise TraceError(path, f"not an integer: {stripped[:40]!r}", number) from None
        if not 0 <= value <= 100:
            raise TraceError(path, f"utilization {value} outside 0..100", number)
        values.append(value)
    if not values:
        raise TraceError(path, "empty trace")
    return VmTrace(name=path.name, path=path, utilization_pct=tuple(values))


def trace_files(directory: Path) -> list[Path]:
    """Trace files of a directory, sorted by name, hidden files and READMEs skipped."""
    if not directory.is_dir():
        raise TraceError(directory, "not a directory")
    files = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.upper().startswith("README")
    )
    if not files:
        raise TraceError(directory, "no trace files")
    return files


def load_traces(directory: Path, limit: int | None = None) -> list[VmTrace]:
    files = trace_files(directory)
    if limit is not None:
        files = files[:limit]
    return [read_trace(p) for p in files]


def default_trace_dir() -> Path:
    """Return the directory of the PlanetLab sample shipped with the package (see its README)."""
    return Path(__file__).parent / "data" / "planetlab-sample"


def vm_specs(vms: list) -> dict[str, dict]:
    """VM id -> the spec a host needs to run it (trace, MIPS, memory, seed).

    `vms` contains the cluster configuration's VM entries.
    """
    specs = {}
    for vm in vms:
        trace = read_trace(Path(vm.trace_file))
        specs[vm.id] = {
            "trace": list(trace.utilization_pct),
            "mips": vm.mips,
            "memory_bytes": vm.memory_bytes,
            "seed": vm.seed,
        }
    return specs
