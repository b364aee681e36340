"""Find a cluster's broker: --nats URL, else the state dir's cluster.json."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from ._config import ClusterConfig, ConfigError, default_state_dir, pid_alive
from ._broker_cluster import reopen_brokers, wait_until_ready
from ._nats_server import NatsServer


def resolve_state_dir(state_dir: str | None) -> Path:
    return Path(state_dir).expanduser() if state_dir else default_state_dir()


def cluster_running(state_dir: str | None, nats_url: str | None) -> bool:
    """Whether the cluster is live: an explicit --nats URL counts as live."""
    if nats_url:
        return True
    config = ClusterConfig.load(resolve_state_dir(state_dir))
    return config.running and pid_alive(config.supervisor_pid)


@asynccontextmanager
async def broker_url(state_dir: str | None, nats_url: str | None) -> AsyncIterator[str]:
    """Yield the URL of the cluster's broker.

    When the cluster has stopped, start a private nats-server on its stored
    JetStream directory for the duration of the block, so its event history
    stays readable.
    """
    if nats_url:
        yield nats_url
        return
    directory = resolve_state_dir(state_dir)
    config = ClusterConfig.load(directory)
    if config.running and pid_alive(config.supervisor_pid):
        yield config.nats_url
        return
    if not config.store_dir or not Path(config.store_dir).is_dir():
        raise ConfigError(
            f"the cluster in {directory} is not running and has no stored event stream; "
            "pass --nats URL if it runs on an external broker"
        )
    server = reopen_brokers(config) or NatsServer(
        Path(config.store_dir), directory / "logs" / "nats-server-readonly.log", name="dcfleet-reader")
    server.start()
    try:
        await wait_until_ready(server, config)
        yield server.url
    finally:
        server.stop()
