"""Every NATS subject dcfleet uses, defined in one place.

proto/README.md lists them with their message types.
"""

PREFIX = "dcfleet"

# JetStream stream that persists every event.
EVENTS_STREAM = "DCFLEET_EVENTS"
EVENTS_ALL = f"{PREFIX}.events.>"


# An event's subject is `dcfleet.events.<source token>.<type>`. The source comes
# first because NATS allows a `>` wildcard only at the end: a publish permission
# `dcfleet.events.host:h1.>` then covers every event of host h1 and no other.


def source_token(source: str) -> str:
    """One subject token naming an event source: `host.h1` becomes `host:h1`.

    Agent ids are tokens of letters, digits, `-` and `_`, so the `:` keeps the
    mapping one-to-one.
    """
    return source.replace(".", ":")


def event(type_name: str) -> str:
    """Subscription pattern for one event type from any source, e.g. `dcfleet.events.*.host.booted`."""
    return f"{PREFIX}.events.*.{type_name}"


def event_from(source: str, type_name: str) -> str:
    """Subject an agent publishes one event on, e.g. `dcfleet.events.host:h1.host.booted`."""
    return f"{PREFIX}.events.{source_token(source)}.{type_name}"


def events_from(source: str) -> str:
    """Every event subject of one source, e.g. `dcfleet.events.host:h1.>`."""
    return f"{PREFIX}.events.{source_token(source)}.>"


def event_source(subject: str) -> str:
    """Source named by an event subject: `dcfleet.events.host:h1.host.booted` gives `host.h1`."""
    return subject.removeprefix(f"{PREFIX}.events.").partition(".")[0].replace(":", ".")


def event_type(subject: str) -> str:
    """Event type carried by an event subject."""
    return subject.removeprefix(f"{PREFIX}.events.").partition(".")[2]


def inbox_prefix(source: str) -> str:
    """Reply inbox prefix of one agent, so that it may read its own replies only."""
    return f"_INBOX.{source_token(source)}"


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
