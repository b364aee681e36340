"""Messages about the bus itself: refused publishes and subscriptions."""

from __future__ import annotations

from ._messages import Message, message


@message("agent.permission_denied")
class AgentPermissionDenied(Message):
    """The broker refused a publish or subscription of this agent (its subject permissions)."""

    agent: str
    detail: str
