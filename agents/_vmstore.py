"""What a host agent keeps on disk so a restarted agent process resumes its host.

Under `<state dir>/hosts/<host>/agent/`: `power.json` (power state), and per VM
`<vm>.json` (spec, and the migration sending it, if any) with `<vm>.mem` (its
memory as of the last save). Memory is saved when a VM is created or arrives
and when the agent stops cleanly, so after a SIGKILL a VM resumes with the
memory of its last save, as a VM restored from a snapshot. `arrived.json`
records the migrations that committed here, with the verified digest, so a
restarted coordinator can tell a finished migration from an unfinished one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .migration_core import PAGE_SIZE_BYTES

# Committed migrations kept for a coordinator that restarts mid-migration.
MAX_ARRIVED = 256


@dataclass
class StoredVm:
    vm: str
    trace: list[int]
    mips: float
    seed: int
    memory: bytearray
    outgoing_migration: str | None


class HostStore:
    def __init__(self, state_dir: str, host_id: str) -> None:
        self.root = Path(state_dir) / "hosts" / host_id / "agent"

    def _write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)

    def _write_image(self, name: str, size: int, runs: Iterable[tuple[int, list[bytes | memoryview]]]) -> None:
        """Write a memory image of `size` bytes from (first page, pages) runs; the rest reads as zeros.

        The pages go straight from memory to the file with pwritev, which
        releases the GIL, and the gaps stay holes in a sparse file.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        with open(tmp, "wb") as file:
            file.truncate(size)
            for first, pages in runs:
                _pwrite_all(file.fileno(), pages, first * PAGE_SIZE_BYTES)
        os.replace(tmp, self.root / name)

    def save_power_state(self, power_state: str) -> None:
        self._write("power.json", json.dumps({"power_state": power_state}).encode())

    def power_state(self) -> str | None:
        try:
            return json.loads((self.root / "power.json").read_text())["power_state"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return None

    def save_vm(self, vm: Any, outgoing_migration: str | None = None, memory: bool = True) -> None:
        """Store a VM's spec and, unless memory is false, its memory bytes."""
        if memory:
            self._write_image(f"{vm.id}.mem", vm.memory_bytes, vm.memory_runs())
        spec = {"vm": vm.id, "trace": vm.trace, "mips": vm.mips, "seed": vm.seed,
                "outgoing_migration": outgoing_migration}
        self._write(f"{vm.id}.json", json.dumps(spec).encode())

    def drop_vm(self, vm_id: str) -> None:
        (self.root / f"{vm_id}.json").unlink(missing_ok=True)
        (self.root / f"{vm_id}.mem").unlink(missing_ok=True)

    def drop_all(self) -> None:
        for path in self.root.glob("*.json"):
            if path.name not in ("power.json", "arrived.json"):
                self.drop_vm(path.stem)

    def load_vms(self) -> list[StoredVm]:
        """Return the stored VMs, skipping any whose spec or memory file cannot be read."""
        vms = []
        for path in sorted(self.root.glob("*.json")):
            if path.name in ("power.json", "arrived.json"):
                continue
            try:
                spec = json.loads(path.read_text())
                memory = bytearray((self.root / f"{path.stem}.mem").read_bytes())
                vms.append(StoredVm(spec["vm"], list(spec["trace"]), float(spec["mips"]), int(spec["seed"]),
                                    memory, spec.get("outgoing_migration")))
            except (OSError, KeyError, TypeError, ValueError):
                continue
        return vms

    def arrived(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads((self.root / "arrived.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def record_arrival(self, migration: str, vm: str, digest: str) -> None:
        arrived = self.arrived()
        arrived[migration] = {"vm": vm, "digest": digest}
        while len(arrived) > MAX_ARRIVED:
            arrived.pop(next(iter(arrived)))
        self._write("arrived.json", json.dumps(arrived).encode())

    def forget_arrival(self, migration: str) -> str | None:
        """Remove a committed migration that the coordinator aborted; return its VM id."""
        arrived = self.arrived()
        entry = arrived.pop(migration, None)
        if entry is not None:
            self._write("arrived.json", json.dumps(arrived).encode())
        return entry["vm"] if entry else None


def restore_host(agent: Any) -> int:
    """Give a starting host agent the power state and VMs its previous process stored; return the VM count."""
    power_state = agent.store.power_state()
    if power_state is not None:
        agent.power_state = power_state
    for stored in agent.store.load_vms():
        vm = agent.vm_from_store(stored)
        if stored.outgoing_migration:
            # Paused until the coordinator finishes (drops it) or aborts (resumes it).
            vm.paused = True
            agent.outgoing[stored.outgoing_migration] = vm.id
        agent.vms[vm.id] = vm
    return len(agent.vms)


def drop_aborted_arrival(agent: Any, migration: str) -> None:
    """Remove a VM that committed here by a migration the coordinator has since aborted."""
    vm_id = agent.store.forget_arrival(migration)
    if vm_id is not None and vm_id not in agent.outgoing.values():
        agent.vms.pop(vm_id, None)
        agent.store.drop_vm(vm_id)


def _pwrite_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
    """Write every buffer at `offset` onward, resuming after a short write."""
    pending = list(buffers)
    while pending:
        written = os.pwritev(fd, pending, offset)
        offset += written
        done = 0
        while done < len(pending) and written >= len(pending[done]):
            written -= len(pending[done])
            done += 1
        pending = pending[done:]
        if written:
            pending[0] = memoryview(pending[0])[written:]
