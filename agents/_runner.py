"""Entry point of one agent process."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog

from proto import subjects

from . import _log, _metrics
from ._config import ClusterConfig

T = TypeVar("T")
# How long tasks still running after an agent stopped get to end once cancelled.
LEFTOVER_TASKS_WAIT_S = 2.0


def run_agent(kind: str, agent_id: str | None, state_dir: Path, log_level: str | None) -> int:
    config = ClusterConfig.load(state_dir)
    if kind == "host":
        from .host._agent import HostAgent as cls
        if not agent_id:
            raise SystemExit("dcfleet agent host: --id HOST is required")
    elif kind == "bmc":
        from .bmc._agent import BmcAgent as cls
    elif kind == "dpu":
        from .dpu._agent import DpuAgent as cls
    elif kind == "migration":
        from .migration._agent import MigrationCoordinator as cls
    elif kind == "power":
        from .power._agent import PowerManager as cls
    else:
        raise SystemExit(f"unknown agent kind {kind!r}")
    # Configure logging before the agent binds its logger, or that logger keeps structlog's defaults.
    _log.configure(log_level)
    agent = cls(config, agent_id or kind)
    _metrics.serve(state_dir, subjects.source_token(agent.source))
    run_to_end(agent.run())
    return 0


def run_to_end(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` in a new event loop like asyncio.run, but give tasks it leaves behind a bounded time to end.

    asyncio.run waits for every cancelled task to finish. A stopped agent whose
    broker was gone, because its supervisor had been killed with SIGKILL, was
    seen still alive more than a minute later. py-spy showed asyncio.run
    waiting for nats-py 2.16's reconnect task, which went on retrying the
    refused connection after it was cancelled.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftover_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    leftovers = asyncio.all_tasks(loop)
    for task in leftovers:
        task.cancel()
    if not leftovers:
        return
    _done, pending = loop.run_until_complete(asyncio.wait(leftovers, timeout=LEFTOVER_TASKS_WAIT_S))
    if pending:
        structlog.get_logger().warning("agent.tasks_abandoned", tasks=sorted(t.get_name() for t in pending))
