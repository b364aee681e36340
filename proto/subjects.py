"""Every NATS subject dcfleet uses, defined in one place.

proto/README.md lists them with their message types.
"""

PREFIX = "dcfleet"

# JetStream stream that persists every event.
EVENTS_STREAM = "DCFLEET_EVENTS"
EVENTS_ALL = f"{PREFIX}.events.>"


def event(type_name: str) -> str:
    """Subject of one event type, e.g. `dcfleet.events.host.booted`."""
    return f"{PREFIX}.events.{type_name}"


def event_type(subject: str) -> str:
    """Event type carried by an event subject."""
    return subject.removeprefix(f"{PREFIX}.events.")


def host_command(host: str, operation: str) -> str:
    """Commands to one host agent, e.g. `dcfleet.cmd.host.h1.power`."""
    return f"{PREFIX}.cmd.host.{host}.{operation}"


def host_commands(host: str) -> str:
    return f"{PREFIX}.cmd.host.{host}.*"


def migration_pages(migration: str) -> str:
    """Page transfer of one migration, served by the destination host."""
    return f"{PREFIX}.data.migration.{migration}"


MIGRATION_REQUEST = f"{PREFIX}.cmd.migration.migrate"


def dpu_command(dpu: str, operation: str) -> str:
    return f"{PREFIX}.cmd.dpu.{dpu}.{operation}"


def dpu_commands() -> str:
    return f"{PREFIX}.cmd.dpu.*.*"


def is_token(name: str) -> bool:
    """Whether a name is usable as one subject token (host and VM ids)."""
    return bool(name) and all(c.isalnum() or c in "-_" for c in name)
