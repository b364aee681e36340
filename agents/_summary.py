"""Live summary printed by `dcfleet up`, built from the event stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

import proto

from ._config import ClusterConfig


@dataclass
class HostLine:
    power_state: str = "?"
    state: str = "starting"
    utilization: float = 0.0
    vms: int = 0
    watts: float = 0.0


class Summary:
    def __init__(self, config: ClusterConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.hosts = {h.id: HostLine() for h in config.hosts}
        self.migrations_completed = 0
        self.migrations_failed = 0
        self.power_offs = 0
        self.power_ons = 0
        self.rejected = 0
        self.sim_time = 0.0
        self.interactive = out.isatty()
        self._lines_drawn = 0

    async def on_event(self, msg: Any) -> None:
        try:
            envelope = proto.decode(msg.data)
        except proto.MessageRejected:
            self.rejected += 1
            return
        self.apply(envelope.type, envelope.data)

    def apply(self, event_type: str, data: dict[str, Any]) -> None:
        host = self.hosts.get(data.get("host", "")) if isinstance(data.get("host"), str) else None
        if event_type == "host.heartbeat" and host is not None:
            host.power_state = str(data.get("power_state", "?"))
            host.utilization = float(data.get("utilization", 0.0) or 0.0)
            host.vms = len(data.get("vms") or {})
            host.watts = float(data.get("power_watts", 0.0) or 0.0)
            if data.get("booted"):
                host.state = "booted"
            elif host.power_state == "Off":
                host.state = "off"
            self.sim_time = max(self.sim_time, float(data.get("sim_time", 0.0) or 0.0))
        elif event_type == "host.booted" and host is not None:
            host.state = "booted"
        elif event_type == "host.boot_failed" and host is not None:
            host.state = "BOOT FAILED"
        elif event_type == "host.power_off" and host is not None:
            host.power_state, host.state, host.vms, host.watts = "Off", "off", 0, 0.0
            self.power_offs += 1
        elif event_type == "host.power_on" and host is not None:
            host.power_state, host.state = "On", "booting"
            self.power_ons += 1
        elif event_type == "migration.completed":
            self.migrations_completed += 1
        elif event_type == "migration.failed":
            self.migrations_failed += 1
        elif event_type == "agent.message_rejected":
            self.rejected += 1

    def lines(self) -> list[str]:
        hours, rest = divmod(int(self.sim_time), 3600)
        on = sum(1 for h in self.hosts.values() if h.power_state == "On")
        in_service = sum(1 for h in self.hosts.values() if h.power_state == "On" and h.state == "booted")
        vms = sum(h.vms for h in self.hosts.values())
        watts = sum(h.watts for h in self.hosts.values())
        head = (
            f"sim {hours:02d}:{rest // 60:02d}  hosts on {on}/{len(self.hosts)} ({in_service} booted)  VMs {vms}  "
            f"migrations {self.migrations_completed} ok {self.migrations_failed} failed  "
            f"power-off {self.power_offs} power-on {self.power_ons}  {watts:.0f} W"
        )
        if not self.interactive:
            return [head]
        rows = [
            f"  {host_id:<6} {h.power_state:<4} {h.state:<11} util {h.utilization:5.1%}  VMs {h.vms:<3} {h.watts:6.1f} W"
            for host_id, h in self.hosts.items()
        ]
        return [head] + rows

    def detach(self) -> None:
        """Draw the next summary below what was printed meanwhile instead of over it."""
        self._lines_drawn = 0

    def render(self) -> None:
        lines = self.lines()
        if self.interactive and self._lines_drawn:
            # Move the cursor up over the previous summary and clear it.
            self.out.write(f"\x1b[{self._lines_drawn}F\x1b[J")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._lines_drawn = len(lines)
