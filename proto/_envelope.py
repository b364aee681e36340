"""Versioned msgpack envelope shared by every message on the bus."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

ENVELOPE_VERSION = 1
# nats-server's default max_payload is 1 MiB; an envelope never needs more.
MAX_ENVELOPE_BYTES = 1024 * 1024


class MessageRejected(ValueError):
    """A message that cannot be decoded or validated.

    The receiver keeps running: it reports the message with an
    `agent.message_rejected` event and drops it.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Envelope:
    type: str
    source: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)
    version: int = ENVELOPE_VERSION

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "type": self.type,
            "id": self.id,
            "time": self.time,
            "source": self.source,
            "data": self.data,
        }


def encode(envelope: Envelope) -> bytes:
    """Pack an envelope; raise MessageRejected for one over 1 MiB or with an infinite or NaN number.

    JSON has no Infinity or NaN, so `dcfleet events --json` could not print
    such an event as valid JSON.
    """
    where = _non_finite(envelope.data, "data")
    if where or not math.isfinite(envelope.time):
        raise MessageRejected("non-finite", f"{envelope.type}: {where or 'time'} is not a finite number")
    payload = msgpack.packb(envelope.to_wire(), use_bin_type=True)
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise MessageRejected(
            "oversized", f"{len(payload)} bytes, limit {MAX_ENVELOPE_BYTES}"
        )
    return payload


def _non_finite(value: Any, where: str) -> str:
    """Return the path of the first infinite or NaN float inside value, or ""."""
    if isinstance(value, float):
        return "" if math.isfinite(value) else where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return ""
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}")
        if found:
            return found
    return ""


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "v": int,
    "type": str,
    "id": str,
    "time": (int, float),
    "source": str,
    "data": dict,
}


def decode(payload: bytes) -> Envelope:
    """Decode and check an envelope; raise MessageRejected on any defect.

    Unknown top-level fields are ignored so that newer senders can add them.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MessageRejected("wrong-type", f"payload is {type(payload).__name__}")
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise MessageRejected(
            "oversized", f"{len(payload)} bytes, limit {MAX_ENVELOPE_BYTES}"
        )
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise MessageRejected("malformed", f"not one msgpack value: {exc}") from None
    except (ValueError, TypeError) as exc:
        # Truncated input raises ValueError("Unpack failed: incomplete input").
        raise MessageRejected("malformed", str(exc)) from None
    if not isinstance(raw, dict):
        raise MessageRejected("malformed", f"envelope is a {type(raw).__name__}, not a map")
    for name, expected in _REQUIRED.items():
        if name not in raw:
            raise MessageRejected("malformed", f"missing field {name!r}")
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise MessageRejected(
                "malformed", f"field {name!r} has type {type(value).__name__}"
            )
    if raw["v"] != ENVELOPE_VERSION:
        raise MessageRejected(
            "unknown-version", f"version {raw['v']}, supported {ENVELOPE_VERSION}"
        )
    return Envelope(
        type=raw["type"],
        source=raw["source"],
        data=raw["data"],
        id=raw["id"],
        time=float(raw["time"]),
        version=raw["v"],
    )
