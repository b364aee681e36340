"""Typed message classes and their registry.

Each class is a frozen dataclass whose fields describe the `data` map of an
envelope. Decoding is open-world: unknown keys are ignored, missing required
keys and wrong types are rejected.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, TypeVar

from ._envelope import Envelope, MessageRejected, decode

MESSAGE_TYPES: dict[str, type["Message"]] = {}

M = TypeVar("M", bound="Message")


class Message:
    TYPE: ClassVar[str]

    def to_data(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_data(cls: type[M], data: dict[str, Any]) -> M:
        values: dict[str, Any] = {}
        for name, hint, required in _fields(cls):
            if name in data:
                values[name] = _check(cls.TYPE, name, data[name], hint)
            elif required:
                raise MessageRejected("malformed", f"{cls.TYPE}: missing field {name!r}")
        return cls(**values)


@functools.cache
def _fields(cls: type[Message]) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type hint, required) of each field; resolving the hints is slow, so once per class."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    )


def _check(message_type: str, name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(message_type, name, value, option)
            except MessageRejected:
                continue
        raise _wrong_type(message_type, name, value, hint)
    base = origin or hint
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is bytes and isinstance(value, bytearray):
        return bytes(value)
    if base is Any:
        return value
    if isinstance(value, bool) and base is not bool:
        raise _wrong_type(message_type, name, value, hint)
    if not isinstance(value, base):
        raise _wrong_type(message_type, name, value, hint)
    return value


def _wrong_type(message_type: str, name: str, value: Any, hint: Any) -> MessageRejected:
    expected = getattr(hint, "__name__", str(hint))
    return MessageRejected(
        "malformed",
        f"{message_type}: field {name!r} is {type(value).__name__}, expected {expected}",
    )


def message(type_name: str):
    """Register a dataclass as the schema of one message type."""

    def register(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        cls.TYPE = type_name
        if type_name in MESSAGE_TYPES:
            raise RuntimeError(f"message type {type_name!r} registered twice")
        MESSAGE_TYPES[type_name] = cls
        return cls

    return register


def parse_event(subject: str, payload: bytes, expected: type[M] | None = None) -> M:
    """Decode and parse an event received on `subject`, checking who sent it.

    The broker's permissions only limit which subjects an agent may publish on,
    so the envelope's source and type must match the subject's, and an event of
    a host agent may only name that host.
    """
    from . import subjects

    envelope = decode(payload)
    source = subjects.event_source(subject)
    if envelope.source != source or envelope.type != subjects.event_type(subject):
        raise MessageRejected(
            "forged-source",
            f"{envelope.type!r} from {envelope.source!r} arrived on {subject}, which belongs to {source!r}",
        )
    host = envelope.data.get("host")
    if source.startswith("host.") and host is not None and host != source.removeprefix("host."):
        raise MessageRejected("forged-source", f"{source!r} published {envelope.type!r} about host {host!r}")
    return parse(envelope, expected)


def parse(envelope: Envelope, expected: type[M] | None = None) -> M:
    """Return the typed message in an envelope, or raise MessageRejected."""
    cls = MESSAGE_TYPES.get(envelope.type)
    if cls is None:
        raise MessageRejected("unknown-type", f"type {envelope.type!r}")
    if expected is not None and cls is not expected:
        raise MessageRejected(
            "unexpected-type", f"got {envelope.type!r}, expected {expected.TYPE!r}"
        )
    return cls.from_data(envelope.data)  # type: ignore[return-value]


# ---- events: published to the event stream --------------------------------


@message("agent.started")
class AgentStarted(Message):
    agent: str
    kind: str
    pid: int


@message("agent.stopped")
class AgentStopped(Message):
    agent: str
    kind: str
    reason: str


@message("agent.message_rejected")
class AgentMessageRejected(Message):
    agent: str
    subject: str
    reason: str
    detail: str


@message("host.booted")
class HostBooted(Message):
    host: str
    components: list
    boot_count: int


@message("host.boot_failed")
class HostBootFailed(Message):
    host: str
    file: str
    check: str
    reason: str


@message("host.heartbeat")
class HostHeartbeat(Message):
    host: str
    power_state: str
    booted: bool
    utilization: float
    cpu_mips_used: float
    cpu_mips_total: float
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float
    vms: dict
    sim_time: float
    packages: list = dataclasses.field(default_factory=list)


@message("vm.placed")
class VmPlaced(Message):
    vm: str
    host: str
    memory_bytes: int
    digest: str


@message("vm.lost")
class VmLost(Message):
    vm: str
    host: str
    reason: str


@message("power.recommendation")
class PowerRecommendation(Message):
    action: str
    host: str
    reason: str
    scores: dict
    moves: list
    carried_out: bool
    priority: int = 3
    what_if: dict = dataclasses.field(default_factory=dict)


@message("host.power_off")
class HostPowerOff(Message):
    host: str
    via: str


@message("host.power_on")
class HostPowerOn(Message):
    host: str
    via: str


@message("migration.started")
class MigrationStarted(Message):
    migration: str
    vm: str
    source: str
    destination: str


@message("migration.completed")
class MigrationCompleted(Message):
    migration: str
    vm: str
    source: str
    destination: str
    source_digest: str
    destination_digest: str
    stats: dict
    # Guest pages sent as error records, and pages outside that list whose checksums differ.
    poisoned_pages: list = dataclasses.field(default_factory=list)
    differing_pages: list = dataclasses.field(default_factory=list)


@message("migration.failed")
class MigrationFailed(Message):
    migration: str
    vm: str
    source: str
    destination: str
    reason: str


@message("dpu.registered")
class DpuRegistered(Message):
    dpu: str
    host: str
    model: str
    state: str
    os_version: str


# ---- commands: request/reply on core NATS ----------------------------------


@message("reply")
class Reply(Message):
    ok: bool
    error: str = ""
    result: dict = dataclasses.field(default_factory=dict)


@message("host.status")
class HostStatusRequest(Message):
    pass


@message("host.vm_create")
class VmCreate(Message):
    vm: str
    trace: list
    mips: float
    memory_bytes: int
    seed: int
    # Guest page writes per second at 100% CPU demand.
    max_dirty_rate_pages_per_s: float = 2000.0


@message("host.power")
class HostPower(Message):
    action: str
    via: str = ""


@message("host.migrate_prepare")
class MigratePrepare(Message):
    migration: str
    vm: str
    spec: dict


@message("host.migrate_send")
class MigrateSend(Message):
    migration: str
    vm: str
    destination: str
    downtime_limit_ms: int = 300
    max_iterations: int = 30
    auto_converge: bool = False


@message("host.migrate_pages")
class MigratePages(Message):
    migration: str
    # Page records in the migration_core wire format (magic b"DCPR", version 1).
    batch: bytes
    # Batches of a migration are numbered from 1, in the order sent.
    seq: int = 0
    # Reply with an acknowledgement of every batch up to this one.
    ack: bool = True

    def to_data(self) -> dict[str, Any]:
        # dataclasses.asdict walks the batch bytes through its deep copy; these fields are flat.
        return {"migration": self.migration, "batch": self.batch, "seq": self.seq, "ack": self.ack}


@message("host.migrate_commit")
class MigrateCommit(Message):
    migration: str
    source_digest: str
    batches: int = 0
    poisoned_pages: list = dataclasses.field(default_factory=list)


@message("host.migrate_finish")
class MigrateFinish(Message):
    migration: str


@message("host.migrate_abort")
class MigrateAbort(Message):
    migration: str


@message("migration.request")
class MigrationRequest(Message):
    vm: str
    destination: str
    source: str = ""
    downtime_limit_ms: int = 300
    max_iterations: int = 30
    auto_converge: bool = False


@message("dpu.status")
class DpuStatusRequest(Message):
    dpu: str
