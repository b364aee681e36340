"""First placement of a replay's VMs (pure functions over arrays)."""

from __future__ import annotations

import numpy as np


def pack(
    demand_mips: np.ndarray, memory_bytes: np.ndarray, capacity_mips: np.ndarray, host_memory_bytes: np.ndarray,
    curves: list[tuple[float, ...]], target_utilization: float,
) -> np.ndarray:
    """Best-fit decreasing up to the target utilization, opening the most efficient hosts first.

    Hosts open in order of watts per MIPS at the target (then index); each VM, largest
    demand first, goes to the fullest open host it fits on. Returns each VM's host
    index, -1 for a VM that fits nowhere.
    """
    level = round(target_utilization * 10)
    order = sorted(range(len(capacity_mips)), key=lambda h: (curves[h][level] / capacity_mips[h], h))
    placement = np.full(len(demand_mips), -1, dtype=np.int64)
    load = np.zeros(len(capacity_mips))
    used = np.zeros(len(capacity_mips))
    opened = np.zeros(len(capacity_mips), dtype=bool)
    next_host = 0
    for vm in sorted(range(len(demand_mips)), key=lambda v: (-demand_mips[v], v)):
        fit = opened & ((load + demand_mips[vm]) / capacity_mips <= target_utilization) & (
            used + memory_bytes[vm] <= host_memory_bytes
        )
        if fit.any():
            host = int(np.argmax(np.where(fit, load / capacity_mips, -1.0)))
        else:
            host = -1
            while next_host < len(order):
                candidate = order[next_host]
                next_host += 1
                opened[candidate] = True
                if memory_bytes[vm] <= host_memory_bytes[candidate]:
                    host = candidate
                    break
            if host < 0:
                continue
        placement[vm] = host
        load[host] += demand_mips[vm]
        used[host] += memory_bytes[vm]
    return placement


def spread(
    demand_mips: np.ndarray, memory_bytes: np.ndarray, capacity_mips: np.ndarray, host_memory_bytes: np.ndarray
) -> np.ndarray:
    """Round-robin over all hosts, skipping a host without memory for the VM; -1 if none has it."""
    placement = np.full(len(demand_mips), -1, dtype=np.int64)
    used = np.zeros(len(capacity_mips))
    hosts = len(capacity_mips)
    turn = 0
    for vm in range(len(demand_mips)):
        for attempt in range(hosts):
            host = (turn + attempt) % hosts
            if used[host] + memory_bytes[vm] <= host_memory_bytes[host]:
                placement[vm] = host
                used[host] += memory_bytes[vm]
                turn = (host + 1) % hosts
                break
    return placement
