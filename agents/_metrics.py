"""Prometheus metrics of one agent process, served on a port of its listen address.

Every agent in a process shares one registry; the `agent` label
distinguishes them (a packed process runs many host agents). `serve(state_dir, name)`
starts the HTTP endpoint and records its port in
`<state dir>/metrics/<name>.port` and its URL in `<name>.url`, so a scraper
finds every process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import proto

from ._config import listen_address

REGISTRY = CollectorRegistry()

MESSAGES_IN = Counter("dcfleet_messages_in_total", "Commands received and dispatched to a handler",
                      ["agent", "type"], registry=REGISTRY)
MESSAGES_OUT = Counter("dcfleet_messages_out_total", "Events published and commands sent",
                       ["agent", "kind"], registry=REGISTRY)
HANDLER_SECONDS = Histogram("dcfleet_handler_seconds", "Time a command handler ran, in seconds",
                            ["agent", "type"], registry=REGISTRY,
                            buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0))
ERRORS = Counter("dcfleet_errors_total", "Errors by kind: handler exceptions, bus errors, refused permissions",
                 ["agent", "kind"], registry=REGISTRY)
MIGRATIONS = Counter("dcfleet_migrations_total", "Migrations finished, by outcome",
                     ["agent", "outcome"], registry=REGISTRY)
POWER_ON = Gauge("dcfleet_host_power_on", "1 while a host is powered on, 0 while off", ["host"],
                 registry=REGISTRY)

_MIGRATION_OUTCOMES = {"migration.completed": "completed", "migration.failed": "failed"}


def event_published(agent: str, message: proto.Message) -> None:
    """Count one published event and update the gauges it changes."""
    MESSAGES_OUT.labels(agent, "event").inc()
    outcome = _MIGRATION_OUTCOMES.get(message.TYPE)
    if outcome is not None:
        MIGRATIONS.labels(agent, outcome).inc()
    elif message.TYPE in ("host.power_on", "host.booted"):
        POWER_ON.labels(message.host).set(1)
    elif message.TYPE == "host.power_off":
        POWER_ON.labels(message.host).set(0)


def message_sent(agent: str, kind: str) -> None:
    MESSAGES_OUT.labels(agent, kind).inc()


def error(agent: str, kind: str) -> None:
    ERRORS.labels(agent, kind).inc()


@contextmanager
def handling(agent: str, message_type: str) -> Iterator[None]:
    """Count a received command and time its handler; an exception counts as an error of its class."""
    MESSAGES_IN.labels(agent, message_type).inc()
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        ERRORS.labels(agent, type(exc).__name__).inc()
        raise
    finally:
        HANDLER_SECONDS.labels(agent, message_type).observe(time.perf_counter() - started)


def port_file(state_dir: str | Path, name: str) -> Path:
    return Path(state_dir) / "metrics" / f"{name}.port"


def url_file(state_dir: str | Path, name: str) -> Path:
    return Path(state_dir) / "metrics" / f"{name}.url"


def serve(state_dir: str | Path, name: str) -> int:
    """Serve /metrics on a free port of this process's listen address; record the port and URL; return the port.

    The address is 127.0.0.1, or the agent's namespace address under `dcfleet up --netns`.
    """
    address = listen_address()
    server, _thread = prometheus_client.start_http_server(0, addr=address, registry=REGISTRY)
    port = server.server_address[1]
    _write(port_file(state_dir, name), f"{port}\n")
    _write(url_file(state_dir, name), f"http://{address}:{port}/metrics\n")
    return port


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
