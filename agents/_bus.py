"""Bus connection options of agents and commands, and the handling of bus errors."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import proto
from proto import subjects

from . import _metrics
from ._buskeys import OPERATOR, BusSecretPaths, load_seed
from ._config import ClusterConfig, ConfigError

if TYPE_CHECKING:
    from ._agent import Agent

# nats-py passes a server's `-ERR 'Permissions Violation ...'` to the error callback with this text.
PERMISSIONS_VIOLATION = "permissions violation"


def server_urls(config: ClusterConfig) -> list[str]:
    """Every broker URL of the cluster; nats-py fails over between them."""
    return list(config.nats_urls) or [config.nats_url]


def tls_context(state_dir: str | Path) -> ssl.SSLContext:
    """A client context that trusts only the cluster's own CA."""
    paths = BusSecretPaths.of(state_dir)
    return ssl.create_default_context(cafile=str(paths.ca_cert))


def connect_options(config: ClusterConfig, source: str) -> dict[str, Any]:
    """nats.connect keyword arguments for one agent: its NKey, TLS and private inbox."""
    if not config.secure:
        return {}
    paths = BusSecretPaths.of(config.state_dir)
    return {
        "nkeys_seed_str": load_seed(paths, source),
        "tls": tls_context(config.state_dir),
        "inbox_prefix": subjects.inbox_prefix(source).encode(),
    }


def operator_options(config: ClusterConfig | None) -> dict[str, Any]:
    """nats.connect keyword arguments for the supervisor and CLI commands (full permissions)."""
    if config is None or not config.secure:
        return {}
    return connect_options(config, OPERATOR)


def is_permission_violation(exc: Exception) -> bool:
    return PERMISSIONS_VIOLATION in str(exc).lower()


async def on_agent_bus_error(agent: "Agent", exc: Exception) -> None:
    """Count a bus error; a permission violation also gets a log line and an event.

    nats-py calls this from its read loop, so the event is published from a
    separate task: waiting for its ack here would block the loop that reads it.
    """
    if not is_permission_violation(exc):
        _metrics.error(agent.source, "bus")
        return
    _metrics.error(agent.source, "permission_denied")
    detail = str(exc)[:500]
    agent.log.error("bus.permission_denied", detail=detail)
    if agent.js is None or subjects.events_from(agent.source).rstrip(">") in detail:
        # Reporting a refused event with another event would repeat the refusal.
        return
    event = proto.AgentPermissionDenied(agent=agent.source, detail=detail)
    agent.spawn(agent.publish(event), "report permission violation")


def operator_options_for(state_dir: str | None, url: str) -> dict[str, Any]:
    """Operator options when `url` is a broker of the secured cluster in `state_dir`, else none.

    A stopped cluster's history is served by its own brokers reopened with the
    cluster's settings (TLS and credentials with --secure), or by a private
    plain broker when `dcfleet up` ran a single one without them.
    """
    from ._locate import resolve_state_dir

    try:
        config = ClusterConfig.load(resolve_state_dir(state_dir))
    except ConfigError:
        return {}
    if url not in server_urls(config):
        return {}
    return operator_options(config)


def redfish_base_url(config: ClusterConfig, host: Any) -> str:
    """Base URL of a host's BMC Redfish service, always HTTPS (Redfish requires it for Basic auth)."""
    return f"https://{config.bmc_address()}:{host.bmc_port}"


def redfish_server_ssl(config: ClusterConfig) -> ssl.SSLContext | None:
    """Server context of the BMC's Redfish services: the cluster's server certificate."""
    paths = BusSecretPaths.of(config.state_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths.server_cert, paths.server_key)
    return context


def redfish_client_ssl(config: ClusterConfig) -> ssl.SSLContext | bool:
    """`ssl` argument for aiohttp connectors talking to the BMC: the cluster CA."""
    return tls_context(config.state_dir)
