"""Event publishing through Agent.publish against nats-py's own JetStream publish, same run.

Both sides publish sequentially with an ack per event to the same stream on a
private nats-server, with payloads of the same size (the encoded envelope of a
`host.heartbeat`). Agent.publish adds building and encoding the envelope, the
retry wrapper and the metrics. Rounds alternate so that both sides see the
same machine load; the medians are compared. Goal: ratio at least 0.8.

    python bench/bench_publish.py [--events 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

import proto
from agents._agent import Agent, ensure_event_stream
from agents._config import ClusterConfig
from agents._nats_server import NatsServer
from proto import subjects


def heartbeat(index: int) -> proto.HostHeartbeat:
    return proto.HostHeartbeat(
        host="h1", power_state="On", booted=True, utilization=0.42, cpu_mips_used=1234.5,
        cpu_mips_total=3720.0, memory_used_bytes=index, memory_total_bytes=2**28, power_watts=101.5,
        vms={"vm0001": 500.0, "vm0002": 734.5}, sim_time=float(index),
    )


class BenchAgent(Agent):
    kind = "host"


async def agent_rate(agent: Agent, events: int) -> float:
    started = time.perf_counter()
    for index in range(events):
        await agent.publish(heartbeat(index))
    return events / (time.perf_counter() - started)


async def nats_py_rate(js, payload: bytes, events: int) -> float:
    subject = subjects.event_from("host.h1", "host.heartbeat")
    started = time.perf_counter()
    for _ in range(events):
        await js.publish(subject, payload, headers={"Nats-Msg-Id": uuid.uuid4().hex})
    return events / (time.perf_counter() - started)


async def run(args: argparse.Namespace, tmp: Path) -> tuple[list[float], list[float], int]:
    server = NatsServer(tmp / "store", tmp / "nats.log")
    server.start()
    try:
        config = ClusterConfig(state_dir=str(tmp), nats_url=server.url, epoch=time.time(), time_scale=1.0,
                               hosts=[], vms=[])
        agent = BenchAgent(config, "h1")
        runner = asyncio.create_task(agent.run(handle_signals=False))
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_event_stream(js)
        while agent.js is None:
            await asyncio.sleep(0.05)
        payload = agent.envelope(heartbeat(0))
        agent_rates, nats_rates = [], []
        await agent_rate(agent, 200)  # warm-up
        for _ in range(args.rounds):
            nats_rates.append(await nats_py_rate(js, payload, args.events))
            agent_rates.append(await agent_rate(agent, args.events))
        agent.request_stop("bench done")
        await runner
        await nc.drain()
        return agent_rates, nats_rates, len(payload)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        agent_rates, nats_rates, size = asyncio.run(run(args, Path(tmp)))
    agent_median, nats_median = statistics.median(agent_rates), statistics.median(nats_rates)
    print(f"payload {size} bytes, {args.events} acked publishes per round, {args.rounds} rounds")
    print(f"nats-py js.publish   {nats_median:8.0f} events/s  (rounds: {', '.join(f'{r:.0f}' for r in nats_rates)})")
    print(f"Agent.publish        {agent_median:8.0f} events/s  (rounds: {', '.join(f'{r:.0f}' for r in agent_rates)})")
    print(f"ratio                {agent_median / nats_median:8.3f}  (goal: at least 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
