"""Chaos scenarios: a TOML file of workload, duration and fault schedule, and its plan (pure).

    [workload]            # options of `dcfleet up`
    hosts = 4
    vms = 12
    time_scale = 600
    power_interval_s = 2
    vm_memory = "4M"
    netns = true          # each agent in its own network namespace (root only); needed by `cut`
    netns_subnet = "10.213.0.0/24"

    [run]
    duration_s = 150      # from the first fault window to the stop
    settle_s = 15         # quiet time after the last fault ends

    [random]              # optional: `count` faults at seeded random times
    count = 50
    start_s = 5
    end_s = 120
    kinds = ["kill", "pause", "restart", "broker-kill", "bmc-error", "cut"]
    targets = ["host-*", "power", "migration", "bmc", "dpu"]
    pause_s = [1, 4]      # range of pause and BMC fault durations
    cut_s = [2, 6]        # range of cut durations

    [[fault]]             # optional: faults at fixed times
    at_s = 20
    kind = "kill"
    target = "migration"

    [[action]]            # optional: operator commands at fixed times
    at_s = 10
    kind = "provision-dpu"
    host = "h1"
    image = ""            # optional: a catalog image name; empty picks the newest
"""

from __future__ import annotations

import fnmatch
import json
import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._config import ConfigError, parse_size_bytes
from .._durations import MAX_FAULT_S
from .._netns_plan import parse_subnet

KINDS = ("kill", "pause", "restart", "broker-kill", "broker-pause", "bmc-error", "bmc-slow", "bmc-hang", "cut")
# Kinds whose target is a host (its BMC) or the broker, not an agent process.
BMC_KINDS = ("bmc-error", "bmc-slow", "bmc-hang")
BROKER_KINDS = ("broker-kill", "broker-pause")
# Kinds that last duration_s and are then cleared.
LASTING_KINDS = ("pause", "broker-pause", "cut") + BMC_KINDS
ACTION_KINDS = ("provision-dpu",)


class ScenarioError(ValueError):
    """A scenario file that cannot be run; names the file and the key."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        super().__init__(f"{path}: {key}: {reason}")


@dataclass(frozen=True)
class PlannedFault:
    at_s: float
    kind: str
    target: str
    duration_s: float = 0.0


@dataclass(frozen=True)
class PlannedAction:
    """An operator command at a fixed time: `provision-dpu` of a host's DPUs (image "" is the newest)."""

    at_s: float
    kind: str
    host: str
    image: str = ""


@dataclass
class Scenario:
    path: str
    hosts: int = 3
    vms: int | None = None
    time_scale: float = 600.0
    power_interval_s: float = 2.0
    vm_memory: str = "4M"
    netns: bool = False
    netns_subnet: str = ""
    duration_s: float = 60.0
    settle_s: float = 10.0
    random_count: int = 0
    random_start_s: float = 5.0
    random_end_s: float = 0.0
    random_kinds: tuple[str, ...] = ("kill", "pause")
    random_targets: tuple[str, ...] = ("host-*",)
    pause_range_s: tuple[float, float] = (1.0, 3.0)
    cut_range_s: tuple[float, float] = (2.0, 6.0)
    fixed: list[PlannedFault] = field(default_factory=list)
    actions: list[PlannedAction] = field(default_factory=list)

    def agent_names(self) -> list[str]:
        return [f"host-h{i + 1}" for i in range(self.hosts)] + ["bmc", "dpu", "migration", "power"]


def load_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(path, "file", "not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "file", f"invalid TOML: {exc}") from None
    return parse_scenario(raw, str(path))


def parse_scenario(raw: dict[str, Any], path: str = "<scenario>") -> Scenario:
    unknown = sorted(set(raw) - {"workload", "run", "random", "fault", "action"})
    if unknown:
        raise ScenarioError(path, unknown[0], "unknown table; expected workload, run, random, fault, action")
    scenario = Scenario(path)
    workload, run, rand = raw.get("workload", {}), raw.get("run", {}), raw.get("random")
    _check_keys(path, "workload", workload, ("hosts", "vms", "time_scale", "power_interval_s", "vm_memory",
                                             "netns", "netns_subnet"))
    _check_keys(path, "run", run, ("duration_s", "settle_s"))
    if rand is not None:
        _check_keys(path, "random", rand, ("count", "start_s", "end_s", "kinds", "targets", "pause_s", "cut_s"))
    scenario.hosts = _number(path, "workload.hosts", workload.get("hosts", 3), int, 1)
    if "vms" in workload:
        scenario.vms = _number(path, "workload.vms", workload["vms"], int, 0)
    scenario.time_scale = _positive(path, "workload.time_scale", workload.get("time_scale", 600))
    scenario.power_interval_s = _number(path, "workload.power_interval_s", workload.get("power_interval_s", 2),
                                        float, 0.5)
    scenario.vm_memory = _size(path, "workload.vm_memory", workload.get("vm_memory", "4M"))
    _parse_netns(path, workload, scenario)
    scenario.duration_s = _number(path, "run.duration_s", run.get("duration_s", 60), float, 1.0)
    scenario.settle_s = _number(path, "run.settle_s", run.get("settle_s", 10), float, 0.0)
    if rand is not None:
        _parse_random(path, rand, scenario)
    for index, fault in enumerate(_array(path, "fault", raw.get("fault", []))):
        scenario.fixed.append(_parse_fixed(path, index, fault, scenario))
    for index, action in enumerate(_array(path, "action", raw.get("action", []))):
        scenario.actions.append(_parse_action(path, index, action, scenario))
    scenario.actions.sort(key=lambda a: (a.at_s, a.host))
    _check_cuts_have_netns(path, scenario)
    return scenario


def _parse_netns(path: str, workload: dict[str, Any], scenario: Scenario) -> None:
    netns = workload.get("netns", False)
    if not isinstance(netns, bool):
        raise ScenarioError(path, "workload.netns", f"expected true or false, got {netns!r}")
    scenario.netns = netns
    subnet = workload.get("netns_subnet", "")
    if not isinstance(subnet, str):
        raise ScenarioError(path, "workload.netns_subnet", f"expected a CIDR string, got {subnet!r}")
    if subnet and not netns:
        raise ScenarioError(path, "workload.netns_subnet", "set only with workload.netns = true")
    if subnet:
        try:
            parse_subnet(subnet)
        except ConfigError as exc:
            raise ScenarioError(path, "workload.netns_subnet", str(exc)) from None
    scenario.netns_subnet = subnet


def _check_cuts_have_netns(path: str, scenario: Scenario) -> None:
    if scenario.netns:
        return
    if any(f.kind == "cut" for f in scenario.fixed):
        raise ScenarioError(path, "fault", "a cut needs workload.netns = true (agents in their own namespaces)")
    if scenario.random_count and "cut" in scenario.random_kinds:
        raise ScenarioError(path, "random.kinds", "cut needs workload.netns = true (agents in their own namespaces)")


def _array(path: str, key: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ScenarioError(path, key, f"expected an array of tables ([[{key}]]), got {value!r}")
    return value


def _parse_action(path: str, index: int, action: dict[str, Any], scenario: Scenario) -> PlannedAction:
    key = f"action[{index}]"
    _check_keys(path, key, action, ("at_s", "kind", "host", "image"))
    kind = action.get("kind")
    if kind not in ACTION_KINDS:
        raise ScenarioError(path, f"{key}.kind", f"invalid action kind {kind!r}; expected one of {', '.join(ACTION_KINDS)}")
    at_s = _number(path, f"{key}.at_s", action.get("at_s"), float, 0.0)
    if at_s > scenario.duration_s:
        raise ScenarioError(path, f"{key}.at_s", f"{at_s} is after run.duration_s")
    host = action.get("host")
    if host not in [f"h{i + 1}" for i in range(scenario.hosts)]:
        raise ScenarioError(path, f"{key}.host", f"{host!r} is not a host id (h1..h{scenario.hosts})")
    image = action.get("image", "")
    if not isinstance(image, str):
        raise ScenarioError(path, f"{key}.image", f"expected a catalog image name, got {image!r}")
    return PlannedAction(at_s, kind, host, image)


def _parse_random(path: str, rand: dict[str, Any], scenario: Scenario) -> None:
    scenario.random_count = _number(path, "random.count", rand.get("count", 0), int, 0)
    scenario.random_start_s = _number(path, "random.start_s", rand.get("start_s", 5), float, 0.0)
    scenario.random_end_s = _number(path, "random.end_s", rand.get("end_s", scenario.duration_s), float,
                                    scenario.random_start_s)
    if scenario.random_end_s > scenario.duration_s:
        raise ScenarioError(path, "random.end_s", f"{scenario.random_end_s} is after run.duration_s")
    kinds = _strings(path, "random.kinds", rand.get("kinds", list(scenario.random_kinds)))
    for kind in kinds:
        _check_kind(path, "random.kinds", kind)
    scenario.random_kinds = kinds
    scenario.random_targets = _strings(path, "random.targets", rand.get("targets", list(scenario.random_targets)))
    if not _match_agents(scenario, scenario.random_targets):
        raise ScenarioError(path, "random.targets", f"no agent matches {list(scenario.random_targets)}")
    scenario.pause_range_s = _range(path, "random.pause_s", rand.get("pause_s", list(scenario.pause_range_s)))
    scenario.cut_range_s = _range(path, "random.cut_s", rand.get("cut_s", list(scenario.cut_range_s)))


def _range(path: str, key: str, value: Any) -> tuple[float, float]:
    valid = (isinstance(value, list) and len(value) == 2
             and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
             and 0 < value[0] <= value[1] <= MAX_FAULT_S)
    if not valid:
        raise ScenarioError(path, key, f"expected [low, high] seconds with 0 < low <= high <= {MAX_FAULT_S:g}, "
                            f"got {value!r}")
    return float(value[0]), float(value[1])


def _strings(path: str, key: str, value: Any) -> tuple[str, ...]:
    """Return an array of strings as a tuple; a bare string is rejected, since it would be read letter by letter."""
    if isinstance(value, str):
        quoted = json.dumps(value)
        raise ScenarioError(path, key, f"expected an array of strings, got the string {quoted}; write [{quoted}]")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ScenarioError(path, key, f"expected an array of strings, got {value!r}")
    return tuple(value)


def _size(path: str, key: str, value: Any) -> str:
    """Check a memory size as `dcfleet up --vm-memory` takes it (4M, 512K, bytes); return it as text."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ScenarioError(path, key, f"expected a size such as \"4M\", got {value!r}")
    try:
        parse_size_bytes(str(value))
    except ValueError as exc:
        raise ScenarioError(path, key, str(exc)) from None
    return str(value)


def _check_keys(path: str, table: str, values: Any, known: tuple[str, ...]) -> None:
    """Reject a misspelt key, which would otherwise fall back to its default silently."""
    if not isinstance(values, dict):
        raise ScenarioError(path, table, f"expected a table, got {values!r}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ScenarioError(path, f"{table}.{unknown[0]}", f"unknown key; expected one of {', '.join(known)}")


def _parse_fixed(path: str, index: int, fault: dict[str, Any], scenario: Scenario) -> PlannedFault:
    key = f"fault[{index}]"
    _check_keys(path, key, fault, ("at_s", "kind", "target", "duration_s"))
    kind = _check_kind(path, f"{key}.kind", fault.get("kind"))
    at_s = _number(path, f"{key}.at_s", fault.get("at_s"), float, 0.0)
    lasting = kind in LASTING_KINDS
    duration_s = _number(path, f"{key}.duration_s", fault.get("duration_s", 2.0), float, 0.0) if lasting else 0.0
    if lasting and not 0 < duration_s <= MAX_FAULT_S:
        raise ScenarioError(path, f"{key}.duration_s", f"a {kind} must last more than 0 s and at most "
                            f"{MAX_FAULT_S:g} s, got {duration_s:g}")
    if at_s + duration_s > scenario.duration_s:
        raise ScenarioError(path, key, f"ends at {at_s + duration_s} s, after run.duration_s")
    target = str(fault.get("target", ""))
    if kind in BMC_KINDS and target not in [f"h{i + 1}" for i in range(scenario.hosts)]:
        raise ScenarioError(path, f"{key}.target", f"{target!r} is not a host id (h1..h{scenario.hosts})")
    if kind not in BMC_KINDS + BROKER_KINDS and target not in scenario.agent_names():
        raise ScenarioError(path, f"{key}.target", f"{target!r} is not an agent ({', '.join(scenario.agent_names())})")
    return PlannedFault(at_s, kind, "broker" if kind in BROKER_KINDS else target, duration_s)


def _check_kind(path: str, key: str, kind: Any) -> str:
    if kind not in KINDS:
        raise ScenarioError(path, key, f"invalid fault kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _number(path: str, key: str, value: Any, kind: type, minimum: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ScenarioError(path, key, f"expected a{'n integer' if kind is int else ' number'}, got {value!r}")
    if not math.isfinite(value):
        raise ScenarioError(path, key, f"must be a finite number, got {value}")
    if value < minimum:
        raise ScenarioError(path, key, f"must be at least {minimum:g}, got {value}")
    return kind(value)


def _positive(path: str, key: str, value: Any) -> float:
    number = _number(path, key, value, float, 0.0)
    if number == 0:
        raise ScenarioError(path, key, "must be positive, got 0")
    return number


def _match_agents(scenario: Scenario, patterns: tuple[str, ...]) -> list[str]:
    return [name for name in scenario.agent_names() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def plan(scenario: Scenario, seed: int) -> list[PlannedFault]:
    """The faults of a run in time order: the fixed ones and `random.count` drawn with `seed`."""
    rng = random.Random(seed)
    agents = _match_agents(scenario, scenario.random_targets)
    hosts = [f"h{i + 1}" for i in range(scenario.hosts)]
    faults = list(scenario.fixed)
    for _ in range(scenario.random_count):
        kind = rng.choice(scenario.random_kinds)
        duration_s = round(rng.uniform(*(scenario.cut_range_s if kind == "cut" else scenario.pause_range_s)), 2)
        latest = max(scenario.random_start_s, scenario.random_end_s - duration_s)
        at_s = round(rng.uniform(scenario.random_start_s, latest), 2)
        if kind in BROKER_KINDS:
            target = "broker"
        elif kind in BMC_KINDS:
            target = rng.choice(hosts)
        else:
            target = rng.choice(agents)
        needs_duration = kind in LASTING_KINDS
        faults.append(PlannedFault(at_s, kind, target, duration_s if needs_duration else 0.0))
    return sorted(faults, key=lambda f: (f.at_s, f.kind, f.target))
