"""Build the policy's host views from what the power agent has heard on the bus."""

from __future__ import annotations

import math
from typing import Any

from ..host._hardware import SPECPOWER_WATTS, power_watts
from ._demand import DemandHistory
from ._model import HostState, PowerSettings, VmLoad


def settings_from_config(power: Any) -> PowerSettings:
    """PowerSettings from a cluster configuration's PowerConfig."""
    return PowerSettings(
        target_utilization=power.target_utilization,
        tolerance=power.tolerance,
        min_hosts_on=power.min_hosts_on,
        threshold=power.threshold,
        automation=power.automation,
        power_on_window_s=power.power_on_window_s,
        power_off_window_s=power.power_off_window_s,
        boot_s=power.boot_s,
        expected_off_s=power.expected_off_s,
    )


def host_states(
    hosts: list[Any],
    heartbeats: dict[str, Any],
    failed_boot: set[str],
    memory_bytes: dict[str, int],
    history: DemandHistory,
    now_s: float,
    window_s: float,
    power_changed_at_s: dict[str, float] | None = None,
) -> list[HostState]:
    """One HostState per configured host, VM demand averaged over the window.

    `hosts` are HostConfig entries, `heartbeats` the latest host.heartbeat per host,
    `memory_bytes` the memory of each known VM; VMs not in it are left out.
    `power_changed_at_s` is the simulated time of each host's last power change by the
    manager; a host not in it has been in its state since the cluster started.
    """
    changed = power_changed_at_s or {}
    states = []
    for host in hosts:
        heartbeat = heartbeats.get(host.id)
        powered_on = heartbeat is not None and heartbeat.power_state == "On"
        available = host.id not in failed_boot and (heartbeat is None or heartbeat.booted or not powered_on)
        vms = tuple(
            VmLoad(vm, history.estimate(vm, now_s, window_s), memory_bytes[vm])
            for vm in (heartbeat.vms if heartbeat is not None and powered_on else {})
            if vm in memory_bytes
        )
        curve = SPECPOWER_WATTS.get(host.model, ())
        states.append(
            HostState(host.id, powered_on, available, host.cpu_mips_total, host.memory_bytes, vms,
                      power_watts(host.model, 0.0) if curve else 0.0, tuple(curve),
                      max(0.0, now_s - changed.get(host.id, -math.inf)))
        )
    return states
