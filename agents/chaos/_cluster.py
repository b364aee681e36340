"""Fault injection against a cluster that `dcfleet up` runs on this machine.

    from agents.chaos import Cluster
    cluster = await Cluster.attach(state_dir)
    await cluster.kill("host-h1")
    await cluster.close()

Processes are found through the pid file `dcfleet up` keeps in the state dir.
Every fault is stored as `fault.injected` before it acts and `fault.cleared`
when it ends (a resumed process, a restarted one, a BMC responding again, a
network link up again). A timed fault (pause, cut, BMC fault) whose call is
cancelled is undone at once and stored as cleared with an outcome that starts
with "interrupted".
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats

import proto

from .. import _netns
from .._client import ClusterClient
from .._config import ClusterConfig, ConfigError, pid_alive
from .._durations import MAX_DELAY_S, check_seconds
from .._supervise import PidRegistry, ProcessEntry, retry
from ._bmc_faults import BMC_FAULT_SUBJECT

# How long a fault waits for `dcfleet up` to bring back a killed process.
RESTART_WAIT_S = 60.0
EVENT_RETRY_S = 60.0
PUBLISH_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)

T = TypeVar("T")


class FaultTargetError(LookupError):
    """No process of that name runs in the cluster; the message lists the names that do."""

    def __init__(self, target: str, known: list[str]) -> None:
        self.target = target
        self.known = known
        super().__init__(f"no process {target!r} in the cluster; known: {', '.join(known) or 'none'}")


class Cluster:
    """A running cluster, for injecting faults into its processes, broker and BMCs."""

    def __init__(self, config: ClusterConfig, client: ClusterClient) -> None:
        self.config = config
        self.client = client
        self.registry = PidRegistry(config.state_dir)

    @classmethod
    async def attach(cls, state_dir: str | Path) -> "Cluster":
        config = ClusterConfig.load(Path(state_dir))
        if not (config.running and pid_alive(config.supervisor_pid)):
            raise ConfigError(f"the cluster in {state_dir} is not running; start it with `dcfleet up`")
        # Reconnect forever: a fault may be the broker's own restart.
        nc = await nats.connect(config.nats_url, connect_timeout=5, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.25, error_cb=_quiet, disconnected_cb=_quiet_event,
                                reconnected_cb=_quiet_event)
        return cls(config, ClusterClient(nc, "chaos", config))

    async def close(self) -> None:
        await self.client.nc.drain()

    def processes(self) -> dict[str, ProcessEntry]:
        return self.registry.read()

    def process(self, target: str) -> ProcessEntry:
        entries = self.processes()
        if target not in entries:
            raise FaultTargetError(target, sorted(entries))
        return entries[target]

    # ---- events -----------------------------------------------------------------

    async def _event(self, message: proto.Message) -> None:
        await retry(lambda: self.client.publish_event(message), PUBLISH_ERRORS, EVENT_RETRY_S)

    async def _injected(self, fault: str, target: str, **params: Any) -> str:
        fault_id = uuid.uuid4().hex[:12]
        await self._event(proto.FaultInjected(fault=fault, target=target, fault_id=fault_id, params=params))
        return fault_id

    async def _cleared(self, fault: str, target: str, fault_id: str, outcome: str) -> None:
        await self._event(proto.FaultCleared(fault=fault, target=target, fault_id=fault_id, outcome=outcome))

    # ---- process faults -----------------------------------------------------------

    async def kill(self, target: str, wait: bool = True) -> str:
        """SIGKILL an agent or the broker ("broker"); with wait, until `dcfleet up` restarted it."""
        return await self._signal_and_wait("kill", target, signal.SIGKILL, wait)

    async def restart(self, target: str, wait: bool = True) -> str:
        """SIGTERM an agent so it stops cleanly; `dcfleet up` starts it again."""
        return await self._signal_and_wait("restart", target, signal.SIGTERM, wait)

    async def _signal_and_wait(self, fault: str, target: str, signum: int, wait: bool) -> str:
        entry = self.process(target)
        fault_id = await self._injected(fault, target, pid=entry.pid, signal=signal.Signals(signum).name)
        _send(entry.pid, signum)
        if wait:
            outcome = await self.wait_restarted(target, entry.pid)
            await self._cleared(fault, target, fault_id, outcome)
        return fault_id

    async def wait_restarted(self, target: str, old_pid: int, timeout_s: float = RESTART_WAIT_S) -> str:
        """Wait for a process to run again under a new pid; return how it ended."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.processes().get(target)
            if entry is not None and entry.pid != old_pid and pid_alive(entry.pid):
                return f"restarted as pid {entry.pid}"
            await asyncio.sleep(0.2)
        return f"not restarted within {timeout_s:g} s"

    async def pause(self, target: str, duration_s: float) -> str:
        """SIGSTOP a process for duration_s seconds, then SIGCONT it."""
        duration_s = check_seconds(duration_s, "duration_s")
        entry = self.process(target)
        fault_id = await self._injected("pause", target, pid=entry.pid, duration_s=duration_s)

        async def stop() -> None:
            _send(entry.pid, signal.SIGSTOP)

        async def resume() -> None:
            _send(entry.pid, signal.SIGCONT)

        await self._hold("pause", target, fault_id, duration_s, stop, resume, "resumed")
        return fault_id

    async def _hold(self, fault: str, target: str, fault_id: str, duration_s: float,
                    apply: Callable[[], Awaitable[None]], undo: Callable[[], Awaitable[None]], outcome: str) -> None:
        """Apply a fault, keep it for duration_s, then undo it and store fault.cleared.

        When cancelled part way, it undoes the fault and stores fault.cleared
        with outcome "interrupted; <outcome>" before re-raising, because a
        stopped process, a link left down or a hanging BMC would break the
        cluster for good.
        """
        try:
            await apply()
            await asyncio.sleep(duration_s)
        except asyncio.CancelledError:
            await _despite_cancel(self._clear(fault, target, fault_id, undo, f"interrupted; {outcome}"))
            raise
        await self._clear(fault, target, fault_id, undo, outcome)

    async def _clear(self, fault: str, target: str, fault_id: str, undo: Callable[[], Awaitable[None]],
                     outcome: str) -> None:
        await undo()
        await self._cleared(fault, target, fault_id, outcome)

    # ---- network faults ---------------------------------------------------------------

    async def cut(self, target: str, duration_s: float) -> str:
        """Cut an agent process off the bridge for duration_s seconds, then restore it.

        Takes the root-side end of the agent's veth pair down, so the agent
        reaches neither the broker nor other agents, and they do not reach it.
        Needs a cluster started with `dcfleet up --netns`.
        """
        duration_s = check_seconds(duration_s, "duration_s")
        link = self.agent_link(target)
        fault_id = await self._injected("cut", target, link=link, duration_s=duration_s)

        async def take_down() -> None:
            await asyncio.to_thread(_netns.set_link, link, False)

        async def restore() -> None:
            await asyncio.to_thread(_netns.set_link, link, True)

        await self._hold("cut", target, fault_id, duration_s, take_down, restore, f"link {link} up")
        return fault_id

    def agent_link(self, target: str) -> str:
        """Return the root-side veth of an agent process's namespace."""
        plan = _netns.read_record(self.config.state_dir)
        if plan is None:
            raise ConfigError(f"the cluster in {self.config.state_dir} was not started with `dcfleet up --netns`, "
                              "so its agents share one network namespace and cannot be cut apart")
        if target == "broker":
            raise ConfigError("the broker runs in the root namespace, on the bridge every agent uses; "
                              f"cut an agent instead: {', '.join(sorted(plan.agents))}")
        if target not in plan.agents:
            raise FaultTargetError(target, sorted(plan.agents))
        return plan.agents[target].link

    # ---- BMC faults -----------------------------------------------------------------

    async def bmc_fault(self, host: str, mode: str, duration_s: float, delay_s: float = 0.0) -> str:
        """Make a host's Redfish service respond with 500 (error), slowly (slow) or never (hang) for duration_s."""
        duration_s = check_seconds(duration_s, "duration_s")
        if mode == "slow":
            delay_s = check_seconds(delay_s, "delay_s", MAX_DELAY_S)
        self.config.host(host)
        target = f"bmc:{host}"
        fault_id = await self._injected(f"bmc-{mode}", target, duration_s=duration_s, delay_s=delay_s)

        async def misbehave() -> None:
            await self._bmc_command(host, mode, delay_s)

        async def answer_normally() -> None:
            await self._bmc_command(host, "none", 0.0)

        await self._hold(f"bmc-{mode}", target, fault_id, duration_s, misbehave, answer_normally,
                         "answering normally")
        return fault_id

    async def _bmc_command(self, host: str, mode: str, delay_s: float) -> None:
        # The BMC agent may itself be restarting; retry until it responds.
        from .._agent import CommandTimeout

        await retry(lambda: self.client.request(BMC_FAULT_SUBJECT, proto.BmcFault(host, mode, delay_s)),
                    (CommandTimeout,), RESTART_WAIT_S)


async def _despite_cancel(cleanup: Awaitable[T]) -> T:
    """Await `cleanup` to its end even when the caller is cancelled again meanwhile; then raise that cancellation."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        # Already gone (killed by an earlier fault); the supervisor restarts it.
        pass


async def _quiet(_exc: Exception) -> None:
    # Connection errors are expected while a fault restarts the broker; the client reconnects.
    return None


async def _quiet_event() -> None:
    return None
