"""Provisions a host agent has started and not yet ended, kept on disk for its next process.

Under `<state dir>/hosts/<host>/agent/provisions/`, one `<provision>.json` per
provision: the envelope of its `dpu.provision_started` event, written before
the event is published, and the BMC task monitor once SimpleUpdate accepted
the capsule. A restarted host agent publishes that envelope again (the event
stream stores an id once within its duplicate window) and then ends the
provision, so every accepted provision gets its terminal event.
`dcfleet up` clears the directory with the rest of the agent's store.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import proto

from .._vmstore import HostStore


@dataclass(frozen=True)
class OpenProvision:
    started: proto.Envelope
    task_uri: str

    @property
    def provision_id(self) -> str:
        return str(self.started.data.get("provision", ""))


class ProvisionJournal:
    def __init__(self, state_dir: str, host_id: str) -> None:
        self.root = HostStore(state_dir, host_id).root / "provisions"

    def begin(self, provision_id: str, started: proto.Envelope) -> None:
        self._write(provision_id, {"started": started.to_wire(), "task_uri": ""})

    def set_task(self, provision_id: str, task_uri: str) -> None:
        entry = self._read(self._path(provision_id))
        if entry is not None:
            self._write(provision_id, {"started": entry.started.to_wire(), "task_uri": task_uri})

    def end(self, provision_id: str) -> None:
        self._path(provision_id).unlink(missing_ok=True)

    def open_provisions(self) -> list[OpenProvision]:
        """Return the provisions that were started and not ended, oldest first; unreadable entries are skipped."""
        if not self.root.is_dir():
            return []
        entries = [self._read(path) for path in self.root.glob("*.json")]
        return sorted((e for e in entries if e is not None), key=lambda e: e.started.time)

    def _path(self, provision_id: str) -> Path:
        return self.root / f"{provision_id}.json"

    def _write(self, provision_id: str, body: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self._path(provision_id)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path) -> OpenProvision | None:
        try:
            body = json.loads(path.read_text())
            wire = body["started"]
            started = proto.Envelope(type=wire["type"], source=wire["source"], data=wire["data"], id=wire["id"],
                                     time=float(wire["time"]), version=int(wire["v"]))
            return OpenProvision(started, str(body.get("task_uri", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
