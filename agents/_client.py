"""Client side of the bus for commands that talk to a running cluster."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import nats

import proto

from ._agent import send_command
from ._config import ClusterConfig, ConfigError, pid_alive
from ._bus import operator_options_for
from ._locate import broker_url, resolve_state_dir


class ClusterClient:
    """A connection to a cluster's broker that sends commands and publishes events."""

    def __init__(self, nc: nats.NATS, source: str, config: ClusterConfig | None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.source = source
        self.config = config

    def _encode(self, message: proto.Message) -> bytes:
        return proto.encode(proto.Envelope(type=message.TYPE, source=self.source, data=message.to_data()))

    async def request(self, subject: str, message: proto.Message, timeout_s: float = 5.0) -> dict[str, Any]:
        """Send a command; return the reply's result or raise CommandFailed / CommandTimeout."""
        return await send_command(self.nc, subject, self._encode(message), timeout_s)

    async def publish_event(self, message: proto.Message) -> None:
        envelope = proto.Envelope(type=message.TYPE, source=self.source, data=message.to_data())
        await self.js.publish(
            proto.subjects.event_from(self.source, message.TYPE), proto.encode(envelope),
            headers={"Nats-Msg-Id": envelope.id},
        )


@asynccontextmanager
async def cluster_client(
    state_dir: str | None, nats_url: str | None, source: str = "cli", require_running: bool = True
) -> AsyncIterator[ClusterClient]:
    """Connect to the cluster found by --state-dir / --nats (see `broker_url`).

    With require_running false, a stopped cluster's stored stream is served by a
    private broker, which suits commands that only read history.
    """
    config = None
    if not nats_url:
        directory = resolve_state_dir(state_dir)
        config = ClusterConfig.load(directory)
        if require_running and not (config.running and pid_alive(config.supervisor_pid)):
            raise ConfigError(f"the cluster in {directory} is not running; start it with `dcfleet up`")
    async with broker_url(state_dir, nats_url) as url:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3,
                                **operator_options_for(state_dir, url))
        try:
            yield ClusterClient(nc, source, config)
        finally:
            await nc.drain()
