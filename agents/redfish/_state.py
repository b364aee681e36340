"""Everything one Redfish service instance keeps between requests."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from agents.redfish._auth import AuthStore
from agents.redfish._backend import RedfishBackend
from agents.redfish._events import EventBus
from agents.redfish._tasks import TaskRegistry
from agents.redfish._update import UpdatePolicy


@dataclass
class ServiceState:
    """The backend, accounts and sessions, tasks and event streams of one service."""

    backend: RedfishBackend
    auth: AuthStore
    policy: UpdatePolicy
    manager_id: str = "BMC"
    service_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    events: EventBus = field(default_factory=EventBus)
    tasks: TaskRegistry = field(init=False)
    background: set[asyncio.Task] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.tasks = TaskRegistry(self.events)
