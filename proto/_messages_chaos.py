"""Messages of fault injection, supervision and command outcomes."""

from __future__ import annotations

from ._messages import Message, message

# ---- events ------------------------------------------------------------------


@message("fault.injected")
class FaultInjected(Message):
    fault: str
    target: str
    fault_id: str
    params: dict


@message("fault.cleared")
class FaultCleared(Message):
    fault: str
    target: str
    fault_id: str
    outcome: str


@message("agent.crashed")
class AgentCrashed(Message):
    agent: str
    kind: str
    pid: int
    exit_status: int
    restart_in_s: float


@message("agent.restarted")
class AgentRestarted(Message):
    agent: str
    kind: str
    pid: int
    restarts: int


@message("broker.restarted")
class BrokerRestarted(Message):
    pid: int
    restarts: int
    down_s: float


@message("power.completed")
class PowerCompleted(Message):
    action: str
    host: str


@message("power.failed")
class PowerFailed(Message):
    action: str
    host: str
    reason: str


# ---- commands ----------------------------------------------------------------


@message("bmc.fault")
class BmcFault(Message):
    """Make one host's Redfish service misbehave until mode is `none`."""

    host: str
    mode: str
    delay_s: float = 0.0
