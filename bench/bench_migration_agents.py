"""Live migration between real host agents (a 1 GiB VM by default), against nats-py publishing.

Starts a nats-server, two host agent processes and the migration coordinator
(the processes `dcfleet up` runs), creates an idle VM on h1 and migrates it
back and forth with the coordinator, waiting after each run until the new host
has saved the VM's image. The first run writes into memory the destination
process never touched, so it also pays for the page faults. It is printed on
its own beside the median of all runs. The baseline, in the same run and on the same server,
is one nats-py process publishing chunks of the agents' page-batch size to
another under the agents' credit window (the same unacknowledged limit, an
acknowledgement every few chunks), which is the bus's own limit for this data
path. Prints both rates in MB/s (10^6 bytes) and mbps, and the ratio (goal:
0.7 or more).

    python bench/bench_migration_agents.py [--memory-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats  # noqa: E402
from nats.js.api import DeliverPolicy  # noqa: E402

import proto  # noqa: E402
from agents._nats_server import NatsServer  # noqa: E402
from agents._up import UpOptions, build_config, prepare_state  # noqa: E402
from agents.host._migrate_source import BATCHES_IN_FLIGHT as IN_FLIGHT  # noqa: E402
from agents.host._migrate_source import BATCHES_PER_ACK as PER_ACK  # noqa: E402
from agents.migration_core import DATA_RECORD_SIZE_BYTES, DEFAULT_RECORDS_PER_BATCH, CreditWindow  # noqa: E402
from proto import subjects  # noqa: E402

MIB = 1 << 20
BATCH_BYTES = 10 + DEFAULT_RECORDS_PER_BATCH * DATA_RECORD_SIZE_BYTES


async def receiver(url: str, subject: str) -> None:
    """Receive chunks and acknowledge each chunk that requests it, as a destination host does."""
    nc = await nats.connect(url)

    async def take(msg) -> None:
        if msg.reply:
            await nc.publish(msg.reply, msg.reply.rsplit(".", 1)[1].encode())

    await nc.subscribe(subject, cb=take, pending_bytes_limit=256 * 1024 * 1024)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def baseline(url: str, total_bytes: int) -> float:
    """MB/s of BATCH_BYTES chunks published to another process with the agents' credit window."""
    subject = "bench.baseline"
    child = subprocess.Popen([sys.executable, __file__, "--receiver", url, subject], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()
        nc = await nats.connect(url)
        payload = b"\x5a" * BATCH_BYTES
        count = total_bytes // BATCH_BYTES
        flow = CreditWindow(IN_FLIGHT, PER_ACK)
        acked = asyncio.Event()

        async def on_ack(msg) -> None:
            flow.on_ack(int(msg.data))
            acked.set()

        inbox = nc.new_inbox()
        await nc.subscribe(f"{inbox}.*", cb=on_ack)
        started = time.perf_counter()
        for index in range(count):
            while not flow.can_send():
                acked.clear()
                await asyncio.wait_for(acked.wait(), 30)
            seq, ack = flow.next_batch(last_of_pass=index == count - 1)
            # A reply subject requests an acknowledgement only where the agents request one.
            await nc.publish(subject, payload, reply=f"{inbox}.{seq}" if ack else "")
        while flow.in_flight:
            acked.clear()
            await asyncio.wait_for(acked.wait(), 30)
        elapsed = time.perf_counter() - started
        await nc.close()
        return count * BATCH_BYTES / elapsed / 1e6
    finally:
        child.terminate()
        child.wait()


def start_agent(state_dir: str, kind: str, agent_id: str | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "agents", "agent", kind, "--state-dir", state_dir]
    if agent_id:
        args += ["--id", agent_id]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def request(nc, subject: str, message: proto.Message, timeout_s: float) -> dict:
    envelope = proto.Envelope(type=message.TYPE, source="bench", data=message.to_data())
    reply = proto.parse(proto.decode((await nc.request(subject, proto.encode(envelope), timeout=timeout_s)).data),
                        proto.Reply)
    if not reply.ok:
        raise RuntimeError(f"{message.TYPE}: {reply.error}")
    return reply.result


async def wait_for(events, event_type: str, timeout_s: float, **match) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        msg = await events.next_msg(timeout=max(0.1, deadline - time.monotonic()))
        envelope = proto.decode(msg.data)
        if envelope.type == event_type and all(envelope.data.get(k) == v for k, v in match.items()):
            return


async def wait_for_saved_image(state_dir: Path, host: str, vm: str, timeout_s: float = 120.0) -> float:
    """Wait until a host has saved an arrived VM's memory image; return the seconds waited.

    The save runs in the background after the VM arrives. Waiting for it keeps
    one run's disk write out of the next run, which this host sends.
    """
    store = state_dir / "hosts" / host / "agent"
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if (store / f"{vm}.mem").exists() and not (store / f".{vm}.mem.tmp").exists():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{host} did not save {vm}'s memory image within {timeout_s:g} s")


async def migrations(url: str, state_dir: Path, memory_mib: int, repeat: int) -> list[dict]:
    options = UpOptions(state_dir=state_dir, hosts=2, vms=0, nats_url=url,
                        host_memory_bytes=(memory_mib + 512) * MIB)
    state_dir.mkdir()
    config = build_config(options)
    config.nats_url = url
    prepare_state(config)
    config.running = True
    config.save()
    nc = await nats.connect(url)
    processes = [start_agent(config.state_dir, "host", h) for h in ("h1", "h2")]
    try:
        js = nc.jetstream()
        for _ in range(100):
            try:
                await js.stream_info(subjects.EVENTS_STREAM)
                break
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.1)
        events = await js.subscribe(subjects.EVENTS_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        await wait_for(events, "host.booted", 60, host="h1")
        processes.append(start_agent(config.state_dir, "migration"))
        await wait_for(events, "agent.started", 60, agent="migration")
        print(f"creating a {memory_mib} MiB idle VM on h1", flush=True)
        await request(nc, subjects.host_command("h1", "vm_create"),
                      proto.VmCreate("big", [0], 1000.0, memory_mib * MIB, 7), 300)
        results = []
        hosts = ["h1", "h2"]
        for run in range(repeat):
            source, destination = hosts[run % 2], hosts[(run + 1) % 2]
            for _ in range(100):  # the coordinator learns where the VM is from heartbeats
                try:
                    stats = await request(nc, subjects.MIGRATION_REQUEST,
                                          proto.MigrationRequest(vm="big", destination=destination, source=source), 600)
                    break
                except RuntimeError as exc:
                    if "unknown VM" not in str(exc):
                        raise
                    await asyncio.sleep(0.5)
            ram = stats["ram"]
            rate = ram["transferred"] / (stats["total-time"] / 1000) / 1e6
            print(f"run {run + 1}: {source} -> {destination}: {rate:.1f} MB/s, total-time {stats['total-time']} ms, "
                  f"downtime {stats['downtime']} ms, transferred {ram['transferred']} bytes (zero pages are not sent)",
                  flush=True)
            results.append({"rate": rate, **stats})
            waited = await wait_for_saved_image(Path(config.state_dir), destination, "big")
            print(f"  {destination} wrote the arrived VM's image to its store in the next {waited:.1f} s", flush=True)
        await events.unsubscribe()
        return results
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        await nc.close()


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dcfleet-bench-migrate-"))
    server = NatsServer(workdir / "nats", workdir / "nats.log")
    server.start()
    try:
        print(f"nats-server on {server.url}; batch {BATCH_BYTES} bytes, at most {IN_FLIGHT} unacknowledged, "
              f"an acknowledgement every {PER_ACK}", flush=True)
        baselines = []
        for run in range(args.repeat):
            baselines.append(await baseline(server.url, args.memory_mib * MIB))
            print(f"baseline run {run + 1}: {baselines[-1]:.1f} MB/s", flush=True)
        results = await migrations(server.url, workdir / "state", args.memory_mib, args.repeat)
        base = statistics.median(baselines)
        rate = statistics.median(r["rate"] for r in results)
        print(f"\nnats-py publishing (baseline): {base:.1f} MB/s, {base * 8:.0f} mbps (median of {len(baselines)})")
        print(f"agent migration, {args.memory_mib} MiB VM: {rate:.1f} MB/s, {rate * 8:.0f} mbps "
              f"(median of {len(results)})")
        print(f"ratio: {rate / base:.2f} (goal: at least 0.7)")
        first = results[0]["rate"]
        print(f"first run alone, the destination faulting its memory in during the copy: {first:.1f} MB/s, "
              f"ratio {first / base:.2f}")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=1024, help="VM memory in MiB (default: 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side; medians are compared")
    parser.add_argument("--receiver", nargs=2, metavar=("URL", "SUBJECT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        asyncio.run(receiver(*args.receiver))
        return
    if args.memory_mib <= 0 or args.repeat <= 0:
        parser.error("--memory-mib and --repeat must be positive")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        print("interrupted; the server and agents were stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
