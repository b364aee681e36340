"""Restart policy with capped exponential backoff, retries, and the record of agent pids.

`dcfleet up` restarts a crashed agent (or the embedded broker) after
`RestartPolicy.delay_s()`; fault injection finds processes through the
`PidRegistry` file in the state dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PIDS_NAME = "pids.json"


@dataclass
class RestartPolicy:
    """Delay before the next restart: initial_s x factor^(crashes - 1), at most max_s.

    A process that ran at least stable_s before it crashed starts the count again.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    stable_s: float = 30.0
    crashes: int = 0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.factor < 1 or self.max_s < self.initial_s:
            raise ValueError(f"invalid restart policy: initial_s={self.initial_s}, factor={self.factor}, "
                             f"max_s={self.max_s}")

    def delay_s(self, ran_for_s: float) -> float:
        """Record a crash after `ran_for_s` seconds of running; return the delay before restarting."""
        if ran_for_s >= self.stable_s:
            self.crashes = 0
        self.crashes += 1
        return min(self.initial_s * self.factor ** (self.crashes - 1), self.max_s)


async def retry(
    call: Callable[[], Awaitable[T]],
    retry_on: tuple[type[BaseException], ...],
    deadline_s: float,
    policy: RestartPolicy | None = None,
) -> T:
    """Await `call()` until it succeeds, sleeping by `policy` after each failure in `retry_on`.

    Re-raises the last failure once `deadline_s` seconds have passed.
    """
    policy = policy or RestartPolicy(initial_s=0.2, max_s=2.0)
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await call()
        except retry_on:
            delay = policy.delay_s(0.0)
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class ProcessEntry:
    name: str
    kind: str
    agent_id: str
    pid: int


class PidRegistry:
    """`<state dir>/pids.json`: the pid of every agent and of the embedded broker.

    Written by `dcfleet up` whenever it starts a process; read by fault injection.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / PIDS_NAME

    def record(self, entry: ProcessEntry) -> None:
        entries = self.read()
        entries[entry.name] = entry
        self._write(entries)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def read(self) -> dict[str, ProcessEntry]:
        try:
            raw: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {self.path}: {exc}") from None
        return {name: ProcessEntry(name, e["kind"], e["agent_id"], int(e["pid"])) for name, e in raw.items()}

    def _write(self, entries: dict[str, ProcessEntry]) -> None:
        tmp = self.path.with_suffix(".tmp")
        body = {n: {"kind": e.kind, "agent_id": e.agent_id, "pid": e.pid} for n, e in entries.items()}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, self.path)
