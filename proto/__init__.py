"""Wire protocol of dcfleet: the envelope, typed messages and subjects."""

from . import subjects
from ._envelope import (
    ENVELOPE_VERSION,
    MAX_ENVELOPE_BYTES,
    Envelope,
    MessageRejected,
    decode,
    encode,
)
from ._messages import MESSAGE_TYPES, Message, message, parse, parse_event
from . import _messages_secureboot  # noqa: F401  (registers host.quarantined, host.quote)
from . import _messages_chaos  # noqa: F401  (registers fault, supervision and outcome types)
from . import _messages_pagetables  # noqa: F401  (registers page-table steps, stage-2 and dump types)
from . import _messages_bus  # noqa: F401  (registers agent.permission_denied)
from . import _messages_dpu  # noqa: F401  (registers DPU installs and provisioning events)
from . import _messages_migration  # noqa: F401  (registers migration.progress, vm.machine_check, memory errors)

# Re-export every registered message class (HostBooted, Reply, ...).
globals().update({cls.__name__: cls for cls in MESSAGE_TYPES.values()})

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE_BYTES",
    "MESSAGE_TYPES",
    "Envelope",
    "Message",
    "MessageRejected",
    "decode",
    "encode",
    "message",
    "parse",
    "parse_event",
    "subjects",
] + sorted(cls.__name__ for cls in MESSAGE_TYPES.values())
