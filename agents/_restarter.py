"""Supervision inside `dcfleet up`: restart crashed agents and a dead embedded broker.

Each restart follows a RestartPolicy and is reported as `agent.crashed` then
`agent.restarted` (or `broker.restarted`). Events go through one queue that
retries while the broker is down, so they are stored in the order they happened.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import nats

import proto

from ._supervise import PidRegistry, ProcessEntry, RestartPolicy, retry

if TYPE_CHECKING:
    from ._up import Supervisor

EVENT_RETRY_S = 120.0
BROKER_POLL_S = 0.2
PUBLISH_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


class Restarter:
    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        assert supervisor.config is not None
        self.registry = PidRegistry(supervisor.config.state_dir)
        self.policies: dict[str, RestartPolicy] = {}
        self.restarts: dict[str, int] = {}
        self.events: asyncio.Queue[proto.Message] = asyncio.Queue()

    async def run(self, nc: Any) -> None:
        """Watch every child and the broker until cancelled."""
        self._record_broker()
        watchers = [self._watch_child(child.name) for child in self.supervisor.children]
        if self.supervisor.server is not None:
            watchers.append(self._watch_broker())
        await asyncio.gather(self._publish_events(nc.jetstream()), *watchers)

    def _record_broker(self) -> None:
        server = self.supervisor.server
        if server is not None and server.process is not None:
            self.registry.record(ProcessEntry("broker", "broker", "broker", server.process.pid))

    async def _watch_child(self, name: str) -> None:
        while True:
            child = next(c for c in self.supervisor.children if c.name == name)
            started = time.monotonic()
            status = await child.process.wait()
            ran_for_s = time.monotonic() - started
            policy = self.policies.setdefault(name, RestartPolicy())
            delay_s = policy.delay_s(ran_for_s)
            self.supervisor.note(f"dcfleet: agent {name} exited with status {status}; restarting in {delay_s:g} s "
                                 f"(log: {child.log_path})")
            self.events.put_nowait(proto.AgentCrashed(agent=name, kind=child.kind, pid=child.process.pid,
                                                      exit_status=status, restart_in_s=delay_s))
            await asyncio.sleep(delay_s)
            await self._respawn(child)

    async def _respawn(self, old: Any) -> None:
        entry = self.registry.read().get(old.name)
        agent_id = entry.agent_id if entry else old.name.removeprefix(f"{old.kind}-")
        children = self.supervisor.children
        await self.supervisor._spawn(old.name, old.kind, agent_id)
        # _spawn appends the new child; it takes the old one's place so shutdown order stays.
        new = children.pop()
        children[children.index(old)] = new
        self.restarts[old.name] = self.restarts.get(old.name, 0) + 1
        self.events.put_nowait(proto.AgentRestarted(agent=old.name, kind=old.kind, pid=new.process.pid,
                                                    restarts=self.restarts[old.name]))

    async def _watch_broker(self) -> None:
        server = self.supervisor.server
        policy = RestartPolicy(initial_s=0.2, max_s=5.0)
        restarts = 0
        while True:
            started = time.monotonic()
            while server.process is not None and server.process.poll() is None:
                await asyncio.sleep(BROKER_POLL_S)
            died = time.monotonic()
            delay_s = policy.delay_s(died - started)
            self.supervisor.note(f"dcfleet: broker exited with status {server.process.returncode}; "
                                 f"restarting in {delay_s:g} s")
            await asyncio.sleep(delay_s)
            # Same port and store dir: agents reconnect to the same URL and the stream survives.
            await asyncio.to_thread(server.start)
            restarts += 1
            self._record_broker()
            self.events.put_nowait(proto.BrokerRestarted(pid=server.process.pid, restarts=restarts,
                                                         down_s=round(time.monotonic() - died, 3)))

    async def _publish_events(self, js: Any) -> None:
        while True:
            message = await self.events.get()
            envelope = proto.Envelope(type=message.TYPE, source="up", data=message.to_data())
            payload = proto.encode(envelope)

            async def publish() -> None:
                await js.publish(proto.subjects.event_from("up", message.TYPE), payload, headers={"Nats-Msg-Id": envelope.id})

            try:
                await retry(publish, PUBLISH_ERRORS, EVENT_RETRY_S)
            except PUBLISH_ERRORS as exc:
                print(f"dcfleet: cannot store event {message.TYPE}: {exc!r}", file=sys.stderr, flush=True)
