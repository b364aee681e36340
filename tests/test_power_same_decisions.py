"""The power agent's view of heartbeats and replay's view of a trace reach the same decision."""

from pathlib import Path

import numpy as np

import proto
from agents._config import HostConfig
from agents.power._demand import DemandHistory, window_means
from agents.power._policy import evaluate
from agents.power._views import host_states
from agents.replay._engine import Replay, ReplayOptions
from agents.replay._model import PLANETLAB

# Demand in MIPS per VM over six 300 s samples; VMs 1-2 on h1, 3 on h2, 4 on h3.
DEMAND = np.array([
    [2000.0, 2100.0, 2200.0, 2300.0, 2400.0, 2500.0],
    [1800.0, 1900.0, 1950.0, 2000.0, 2000.0, 2000.0],
    [300.0, 250.0, 200.0, 150.0, 100.0, 100.0],
    [400.0, 400.0, 350.0, 300.0, 300.0, 250.0],
])
MEMORY = [870 * 2**20, 1740 * 2**20, 1740 * 2**20, 613 * 2**20]


def _agent_views(step, window_s):
    hosts = [
        HostConfig(f"h{i + 1}", model, 2, mips, 4096 * 2**20, 0)
        for i, (model, mips) in enumerate([("ML110G4", 1860.0), ("ML110G5", 2660.0)] * 2)
    ]
    placement = {"h1": ["vm0001", "vm0002"], "h2": ["vm0003"], "h3": ["vm0004"], "h4": []}
    history = DemandHistory()
    for sample in range(step):
        for vm in range(4):
            # The sample of interval k is measured at its end, (k + 1) x 300 s.
            history.add(f"vm{vm + 1:04d}", (sample + 1) * 300.0, float(DEMAND[vm, sample]))
    heartbeats = {
        host.id: proto.HostHeartbeat(
            host=host.id, power_state="On" if placement[host.id] else "Off", booted=True, utilization=0.0,
            cpu_mips_used=0.0, cpu_mips_total=host.cpu_mips_total, memory_used_bytes=0,
            memory_total_bytes=host.memory_bytes, power_watts=0.0,
            vms={vm: 0.0 for vm in placement[host.id]}, sim_time=step * 300.0,
        )
        for host in hosts
    }
    memory = {f"vm{i + 1:04d}": MEMORY[i] for i in range(4)}
    return host_states(hosts, heartbeats, set(), memory, history, step * 300.0, window_s)


def _replay_views(tmp_path: Path, step, window_s):
    for vm in range(4):
        (tmp_path / f"trace{vm}").write_text("\n".join(["10"] * 6) + "\n")
    replay = Replay(ReplayOptions(tmp_path, hosts=4, memory_semantics="enforced", preset=PLANETLAB))
    replay.demand = DEMAND
    replay.placement = np.array([0, 0, 1, 2])
    replay.on[:] = [True, True, True, False]
    return replay.host_states(window_means(DEMAND, step, int(window_s // 300)))


def test_window_mean_matches_history():
    history = DemandHistory()
    for sample in range(6):
        history.add("vm", (sample + 1) * 300.0, float(DEMAND[0, sample]))
    assert history.estimate("vm", 1800.0, 1200.0) == window_means(DEMAND, 6, 4)[0]
    assert history.estimate("vm", 1800.0, 300.0) == window_means(DEMAND, 6, 1)[0]


def test_agent_and_replay_views_give_same_decision(tmp_path):
    agent_on, agent_off = _agent_views(6, 300.0), _agent_views(6, 1200.0)
    replay_on, replay_off = _replay_views(tmp_path, 6, 300.0), _replay_views(tmp_path, 6, 1200.0)
    assert _loads(agent_on) == _loads(replay_on)
    assert _loads(agent_off) == _loads(replay_off)
    agent = evaluate(agent_on, _settings(), agent_off)
    replay = evaluate(replay_on, _settings(), replay_off)
    assert agent is not None
    assert agent == replay


def _loads(hosts):
    return [
        (h.id, h.powered_on, h.capacity_mips, h.watts_curve,
         [(v.id, v.demand_mips, v.memory_bytes, v.migration_bytes) for v in h.vms])
        for h in hosts
    ]


def _settings():
    from agents.power._model import PowerSettings

    return PowerSettings(power_off_window_s=1200.0)
