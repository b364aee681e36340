"""Fault injection, chaos scenarios and the Docker backend.

`Cluster` injects faults into a cluster run by `dcfleet up`; `load_scenario`,
`plan` and `run_scenario` run a scenario file; `DockerCluster` (in
`agents.chaos.docker`) maps the same faults onto a `docker compose` cluster.
"""

from ._cluster import Cluster, FaultTargetError
from ._runner import RunResult, inject, run_scenario
from ._scenario import (
    ACTION_KINDS,
    KINDS,
    PlannedAction,
    PlannedFault,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    plan,
)

__all__ = [
    "ACTION_KINDS",
    "KINDS",
    "Cluster",
    "FaultTargetError",
    "PlannedAction",
    "PlannedFault",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "inject",
    "load_scenario",
    "parse_scenario",
    "plan",
    "run_scenario",
]
