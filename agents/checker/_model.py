"""What the checker reads and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HistoryError(ValueError):
    """An event record the checker cannot read; names the record and the field."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"event record {index}: {reason}")


@dataclass(frozen=True)
class Event:
    """One stored event: stream sequence, envelope id, type, sender time, sender and data."""

    seq: int
    id: str
    type: str
    time: float
    source: str
    data: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.seq}"

    @classmethod
    def from_record(cls, index: int, record: Any) -> "Event":
        """Build an event from a dict as `dcfleet events --json` prints it."""
        if not isinstance(record, dict):
            raise HistoryError(index, f"expected a JSON object, got {type(record).__name__}")
        for name, kind in (("seq", int), ("id", str), ("type", str), ("data", dict)):
            value = record.get(name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise HistoryError(index, f"field {name!r} is missing or not {kind.__name__}")
        moment = record.get("time", 0.0)
        if isinstance(moment, bool) or not isinstance(moment, (int, float)):
            raise HistoryError(index, "field 'time' is not a number")
        return cls(record["seq"], record["id"], record["type"], float(moment),
                   str(record.get("source", "")), record["data"])


@dataclass(frozen=True)
class Violation:
    """One broken invariant and the events that show it."""

    invariant: str
    message: str
    events: tuple[Event, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "message": self.message,
            "events": [{"id": e.id, "seq": e.seq, "type": e.type} for e in self.events],
        }


@dataclass(frozen=True)
class Unfinished:
    """A command with no terminal event whose owner never restarted after it began.

    The history ends before its outcome (the agents stopped or the run was cut
    short), so it is not counted as lost.
    """

    command: str
    key: str
    event: Event


@dataclass
class Report:
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    violations: list[Violation] = field(default_factory=list)
    unfinished: list[Unfinished] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations
