"""Entry point of one agent process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proto import subjects

from . import _log, _metrics
from ._config import ClusterConfig


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
    asyncio.run(agent.run())
    return 0
