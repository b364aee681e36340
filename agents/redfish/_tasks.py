"""Tasks: long-running operations tracked by a Task resource and a task monitor."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from agents.redfish._errors import message
from agents.redfish._events import EventBus, now_iso

TASK_ODATA_TYPE = "#Task.v1_7_4.Task"
TASKS_URI = "/redfish/v1/TaskService/Tasks"
MONITORS_URI = "/redfish/v1/TaskService/TaskMonitors"
# TaskState values from Task_v1.xml; the service sets New, Running, Completed and Exception.
TASK_STATES = ("New", "Starting", "Running", "Suspended", "Interrupted", "Pending", "Stopping",
               "Completed", "Killed", "Exception", "Service", "Cancelling", "Cancelled")
FINAL_STATES = ("Completed", "Killed", "Exception", "Cancelled")


@dataclass
class Task:
    """One task; changes go through TaskRegistry so that events follow them."""

    task_id: str
    name: str
    state: str = "New"
    status: str = "OK"
    percent_complete: int = 0
    start_time: str = field(default_factory=now_iso)
    end_time: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"{TASKS_URI}/{self.task_id}"

    @property
    def monitor_uri(self) -> str:
        return f"{MONITORS_URI}/{self.task_id}"

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def resource(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "@odata.id": self.uri,
            "@odata.type": TASK_ODATA_TYPE,
            "Id": self.task_id,
            "Name": self.name,
            "TaskState": self.state,
            "TaskStatus": self.status,
            "PercentComplete": self.percent_complete,
            "StartTime": self.start_time,
            "TaskMonitor": self.monitor_uri,
            "Messages": list(self.messages),
        }
        if self.end_time:
            body["EndTime"] = self.end_time
        return body


class TaskRegistry:
    """The tasks of one service, the newest `max_tasks` of them kept."""

    def __init__(self, events: EventBus, max_tasks: int = 64) -> None:
        self._events = events
        self._tasks: dict[str, Task] = {}
        self._ids = itertools.count(1)
        self._max_tasks = max_tasks

    def create(self, name: str) -> Task:
        task = Task(str(next(self._ids)), name)
        self._tasks[task.task_id] = task
        while len(self._tasks) > self._max_tasks:
            oldest = next(iter(self._tasks))
            if not self._tasks[oldest].finished:
                break
            del self._tasks[oldest]
        return task

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def all(self) -> list[Task]:
        return list(self._tasks.values())

    def start(self, task: Task) -> None:
        task.state = "Running"
        self._events.publish("TaskEvent.TaskStarted", task.task_id, origin=task.uri)

    def progress(self, task: Task, percent: int, note: dict[str, Any] | None = None) -> None:
        """Raise PercentComplete (it never goes down) and record an optional message."""
        if note is not None:
            task.messages.append(note)
        percent = max(0, min(100, percent))
        if percent > task.percent_complete:
            task.percent_complete = percent
            self._events.publish("TaskEvent.TaskProgressChanged", task.task_id, percent,
                                 origin=task.uri)

    def complete(self, task: Task, note: dict[str, Any]) -> None:
        task.messages.append(note)
        task.percent_complete = 100
        self._finish(task, "Completed", "OK")
        self._events.publish("TaskEvent.TaskCompletedOK", task.task_id, origin=task.uri)

    def fail(self, task: Task, note: dict[str, Any]) -> None:
        task.messages.append(note)
        self._finish(task, "Exception", "Critical")
        self._events.publish("TaskEvent.TaskAborted", task.task_id, origin=task.uri,
                             detail=note["Message"])

    @staticmethod
    def _finish(task: Task, state: str, status: str) -> None:
        task.state = state
        task.status = status
        task.end_time = now_iso()


def task_message(key: str, *args: object, detail: str | None = None) -> dict[str, Any]:
    return message(key, *args, detail=detail)
