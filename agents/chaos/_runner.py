"""Run a scenario: a fresh `dcfleet up` child, its fault and action schedule, then the history checker."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .._agent import CommandFailed, CommandTimeout
from .._config import ClusterConfig, ConfigError, pid_alive
from .._durations import MAX_DELAY_S
from .._process import set_parent_death_signal
from .._supervise import PidRegistry
from .._text import plural
from ..checker import check_events, print_report, read_stream
from ._cluster import Cluster, FaultTargetError
from ._scenario import BMC_KINDS, PlannedAction, PlannedFault, Scenario, plan

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 90.0


@dataclass
class RunResult:
    faults_planned: int
    faults_injected: int
    faults_failed: int
    violations: int
    exit_status: int
    actions_planned: int = 0
    actions_failed: int = 0


async def run_scenario(scenario: Scenario, seed: int, state_dir: Path, out: TextIO = sys.stdout) -> RunResult:
    faults = plan(scenario, seed)
    actions = f", {plural(len(scenario.actions), 'action')}" if scenario.actions else ""
    out.write(f"chaos: scenario {scenario.path}, seed {seed}: {plural(len(faults), 'fault')}{actions} over "
              f"{scenario.duration_s:g} s on {plural(scenario.hosts, 'host')}; state dir {state_dir}\n")
    out.flush()
    up = await _start_up(scenario, state_dir)
    injected = failed = actions_failed = 0
    try:
        await _wait_ready(up, state_dir, len(scenario.agent_names()))
        cluster = await Cluster.attach(state_dir)
        try:
            played = await asyncio.gather(_play(cluster, faults, scenario, out),
                                          _act(cluster, scenario.actions, out))
            (injected, failed), actions_failed = played
        finally:
            await cluster.close()
    finally:
        await _stop_up(up)
    out.write("chaos: cluster stopped; checking the stored history\n")
    report = check_events(await read_stream(str(state_dir), None))
    print_report(report, out)
    status = 0 if report.ok and failed == 0 and actions_failed == 0 else 1
    started = f", {plural(len(scenario.actions) - actions_failed, 'action')} started, {actions_failed} failed to " \
        "start" if scenario.actions else ""
    out.write(f"chaos: {plural(injected, 'fault')} injected, {failed} could not be injected{started}, "
              f"{plural(len(report.violations), 'violation')}\n")
    return RunResult(len(faults), injected, failed, len(report.violations), status,
                     len(scenario.actions), actions_failed)


async def _start_up(scenario: Scenario, state_dir: Path) -> asyncio.subprocess.Process:
    state_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "agents", "up", "--state-dir", str(state_dir),
               "--hosts", str(scenario.hosts), "--time-scale", f"{scenario.time_scale:g}",
               "--power-interval", f"{scenario.power_interval_s:g}", "--vm-memory", scenario.vm_memory]
    if scenario.vms is not None:
        command += ["--vms", str(scenario.vms)]
    if scenario.netns:
        command += ["--netns"] + (["--netns-subnet", scenario.netns_subnet] if scenario.netns_subnet else [])
    log = open(state_dir / "up.out", "ab")
    try:
        return await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            preexec_fn=set_parent_death_signal,
        )
    finally:
        log.close()


async def _wait_ready(up: asyncio.subprocess.Process, state_dir: Path, agents: int) -> None:
    """Wait until `dcfleet up` runs and has recorded every agent and the broker."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    registry = PidRegistry(state_dir)
    while time.monotonic() < deadline:
        if up.returncode is not None:
            raise ConfigError(f"dcfleet up exited with status {up.returncode}; see {state_dir / 'up.out'}")
        try:
            config = ClusterConfig.load(state_dir)
            entries = registry.read()
        except (ConfigError, ValueError):
            entries, config = {}, None
        if config is not None and config.running and pid_alive(config.supervisor_pid) and len(entries) >= agents + 1:
            return
        await asyncio.sleep(0.3)
    raise ConfigError(f"the cluster in {state_dir} did not start within {READY_TIMEOUT_S:g} s; see "
                      f"{state_dir / 'up.out'}")


async def _play(cluster: Cluster, faults: list[PlannedFault], scenario: Scenario, out: TextIO) -> tuple[int, int]:
    started = time.monotonic()
    locks: dict[str, asyncio.Lock] = {}
    results: list[bool] = []

    async def one(fault: PlannedFault) -> None:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        # One fault at a time per target: a process is not paused while it is being killed.
        async with locks.setdefault(fault.target, asyncio.Lock()):
            out.write(f"chaos: t+{time.monotonic() - started:6.1f}s {fault.kind} {fault.target}"
                      + (f" for {fault.duration_s:g} s" if fault.duration_s else "") + "\n")
            out.flush()
            try:
                await inject(cluster, fault)
            except (FaultTargetError, ConfigError) as exc:
                out.write(f"chaos: {fault.kind} {fault.target} failed: {exc}\n")
                results.append(False)
                return
            results.append(True)

    await asyncio.gather(*(one(f) for f in faults))
    remaining = started + scenario.duration_s + scenario.settle_s - time.monotonic()
    if remaining > 0:
        out.write(f"chaos: faults done; running {remaining:.0f} s more before stopping\n")
        out.flush()
        await asyncio.sleep(remaining)
    return results.count(True), results.count(False)


async def _act(cluster: Cluster, actions: list[PlannedAction], out: TextIO) -> int:
    """Send each action's command at its time; return how many the cluster did not accept."""
    started = time.monotonic()
    failed = 0
    for action in actions:
        await asyncio.sleep(max(0.0, started + action.at_s - time.monotonic()))
        prefix = f"chaos: t+{time.monotonic() - started:6.1f}s {action.kind} {action.host}"
        try:
            result = await act(cluster, action)
        except (CommandFailed, CommandTimeout) as exc:
            out.write(f"{prefix} failed: {exc}\n")
            failed += 1
        else:
            out.write(f"{prefix}: {result}\n")
        out.flush()
    return failed


async def act(cluster: Cluster, action: PlannedAction) -> str:
    """Send one action's command and return what the cluster accepted. Its outcome arrives as events."""
    if action.kind == "provision-dpu":
        from .._cmd_dpu import request_provision

        reply = await request_provision(cluster.client, action.host, action.image)
        provisions = reply.get("provisions", [])
        return ", ".join(f"provision {p['provision']} of {p['dpu']} with {p['image']}" for p in provisions)
    raise ValueError(f"unknown action kind {action.kind!r}")


async def inject(cluster: Cluster, fault: PlannedFault) -> str:
    """Carry out one planned fault and wait until it is cleared."""
    if fault.kind in ("kill", "broker-kill"):
        return await cluster.kill(fault.target)
    if fault.kind == "restart":
        return await cluster.restart(fault.target)
    if fault.kind in ("pause", "broker-pause"):
        return await cluster.pause(fault.target, fault.duration_s)
    if fault.kind == "cut":
        return await cluster.cut(fault.target, fault.duration_s)
    if fault.kind in BMC_KINDS:
        mode = fault.kind.removeprefix("bmc-")
        delay_s = min(fault.duration_s / 2, MAX_DELAY_S) if mode == "slow" else 0.0
        return await cluster.bmc_fault(fault.target, mode, fault.duration_s, delay_s)
    raise ValueError(f"unknown fault kind {fault.kind!r}")


async def _stop_up(up: asyncio.subprocess.Process) -> None:
    if up.returncode is None:
        up.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(up.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            up.kill()
            await up.wait()
