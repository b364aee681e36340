"""Packed mode: many host agents in one OS process.

Each host agent keeps everything a separate process would have: its own
`HostAgent` object and state, its own broker connection and NKey credential,
its own boot. Only the event loop, the interpreter and the metrics endpoint
are shared. One host failing to start does not stop the others.

At a thousand hosts the heartbeats dominate the bus, so `heartbeat_interval_for`
stretches the interval as the cluster grows (see README, "A thousand hosts").
"""

from __future__ import annotations

import asyncio
import math
import signal
from pathlib import Path

import structlog

from . import _log, _metrics
from ._config import ClusterConfig, ConfigError

# Persisted heartbeats per second the whole cluster aims at: 200 at 1,000 hosts
# and a 5 s interval, far below the ~5.8k acked JetStream publishes/s one broker
# took in a run on 2 cores.
HEARTBEATS_PER_S_TARGET = 200.0
MIN_HEARTBEAT_INTERVAL_S = 1.0


def host_groups(host_ids: list[str], hosts_per_process: int) -> list[list[str]]:
    """Split hosts into consecutive groups of at most `hosts_per_process`, one group per process."""
    if hosts_per_process < 1:
        raise ConfigError(f"--hosts-per-process must be at least 1, got {hosts_per_process}")
    return [host_ids[i : i + hosts_per_process] for i in range(0, len(host_ids), hosts_per_process)]


def heartbeat_interval_for(host_count: int) -> float:
    """Seconds between heartbeats so that the cluster sends about HEARTBEATS_PER_S_TARGET a second."""
    return max(MIN_HEARTBEAT_INTERVAL_S, math.ceil(host_count / HEARTBEATS_PER_S_TARGET * 10) / 10)


def process_name(group: list[str]) -> str:
    """Name of a packed process (log and metrics file), from its first and last host."""
    return f"hosts-{group[0]}" if len(group) == 1 else f"hosts-{group[0]}-{group[-1]}"


async def run_hosts(config: ClusterConfig, host_ids: list[str]) -> int:
    """Run host agents until SIGTERM or SIGINT; return the number that ended with an error."""
    from .host._agent import HostAgent

    log = structlog.get_logger().bind(process=process_name(host_ids))
    agents = [HostAgent(config, host_id) for host_id in host_ids]
    loop = asyncio.get_running_loop()

    def stop_all(signum: int) -> None:
        for agent in agents:
            agent.request_stop(f"signal {signal.Signals(signum).name}")

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_all, signum)
    log.info("packed.started", hosts=len(agents))
    results = await asyncio.gather(*(agent.run(handle_signals=False) for agent in agents),
                                   return_exceptions=True)
    failed = 0
    for agent, result in zip(agents, results):
        if isinstance(result, BaseException):
            failed += 1
            log.error("packed.host_failed", host=agent.id, error=repr(result))
    log.info("packed.stopped", hosts=len(agents), failed=failed)
    return failed


def run_packed(state_dir: Path, host_ids: list[str], log_level: str | None) -> int:
    """Entry point of one packed process (`dcfleet host-pack`)."""
    config = ClusterConfig.load(state_dir)
    for host_id in host_ids:
        config.host(host_id)
    _log.configure(log_level, agent=process_name(host_ids))
    _metrics.serve(state_dir, process_name(host_ids))
    from ._runner import run_to_end

    failed = run_to_end(run_hosts(config, host_ids))
    return 1 if failed else 0
