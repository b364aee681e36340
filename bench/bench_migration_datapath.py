"""Migration data path over NATS against nats-py's own throughput, in one run.

Starts a nats-server on a free loopback port with a temporary store
directory, then runs two process pairs one after the other:

  baseline   one process publishes raw chunks of the batch size, another
             receives them;
  migration  a source process migrates a 1 GiB VM (every page non-zero, the
             guest idle) through PrecopySource, encode_pages and the wire
             format, and a destination process applies each batch with
             PrecopyDestination.

Both hosts keep frames in a prefaulted ArenaFrameStore, created before the
timed copy as QEMU's -mem-prealloc allocates guest RAM before an incoming
migration. Without it, the destination's first write to each page costs a
page fault inside the timed copy; `--sparse` measures that case.

Both pairs use the same credit window: the receiver acknowledges every
`--ack-every` messages and the sender keeps at most `--window` messages
unacknowledged. Prints both rates in MB/s (10^6 bytes) and their ratio; the
goal is 0.7 or more.

    /work/venv/bin/python bench/bench_migration_datapath.py
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import statistics
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats  # noqa: E402

from agents.migration_core import (  # noqa: E402
    DATA_RECORD_SIZE_BYTES,
    DEFAULT_RECORDS_PER_BATCH,
    PAGE_SIZE_BYTES,
    AllocatedPageMap,
    ArenaFrameStore,
    GuestMemory,
    HostMemory,
    PassReport,
    PrecopyDestination,
    PrecopySource,
    SendPass,
    encode_pages,
    populate,
)

GIB = 1 << 30
_ACK = struct.Struct(">Q")
BATCH_BYTES = 10 + DEFAULT_RECORDS_PER_BATCH * DATA_RECORD_SIZE_BYTES


# Parent: the server and the child processes.

def free_loopback_port() -> int:
    # nats-server does not accept port 0, so take a free port from the kernel.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nats-server did not accept connections on 127.0.0.1:{port} within {timeout_s} s")


def start_child(role: str, url: str, args: argparse.Namespace, children: list) -> subprocess.Popen:
    command = [sys.executable, __file__, "--role", role, "--url", url,
               "--memory-mib", str(args.memory_mib), "--window", str(args.window),
               "--ack-every", str(args.ack_every)] + (["--sparse"] if args.sparse else [])
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    children.append(child)
    return child


def read_line(child: subprocess.Popen, role: str) -> dict:
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"{role} process exited with code {child.wait()} before reporting")
    return json.loads(line)


def run_pair(receiver_role: str, sender_role: str, url: str, args: argparse.Namespace, children: list):
    receiver = start_child(receiver_role, url, args, children)
    read_line(receiver, receiver_role)  # subscribed
    sender = start_child(sender_role, url, args, children)
    sent = read_line(sender, sender_role)
    received = read_line(receiver, receiver_role)
    for child in (sender, receiver):
        child.wait(timeout=60)
    return sent, received


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def parent(args: argparse.Namespace) -> None:
    # SIGTERM cleans up like Ctrl-C.
    signal.signal(signal.SIGTERM, raise_interrupt)
    server_binary = shutil.which("nats-server") or str(Path(sys.executable).with_name("nats-server"))
    store_dir = tempfile.mkdtemp(prefix="dcfleet-bench-nats-")
    port = free_loopback_port()
    url = f"nats://127.0.0.1:{port}"
    server = subprocess.Popen([server_binary, "-a", "127.0.0.1", "-p", str(port), "-sd", store_dir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[subprocess.Popen] = []
    interrupted = False
    try:
        wait_for_port(port, timeout_s=10)
        store = "sparse" if args.sparse else "prefaulted arena"
        print(f"nats-server on {url}, {args.memory_mib} MiB VM, {store} frame store, batch {BATCH_BYTES} bytes, "
              f"window {args.window} messages, ack every {args.ack_every}")
        baselines, migrations = [], []
        for run in range(args.repeat):
            baselines.append(run_pair("baseline-receiver", "baseline-sender", url, args, children)[0])
            migrations.append(run_pair("destination", "source", url, args, children))
            print(f"run {run + 1}: baseline {rate_mb_per_s(baselines[-1]):.1f} MB/s, "
                  f"migration {rate_mb_per_s(migrations[-1][0]):.1f} MB/s", flush=True)
        report(baselines, migrations)
    except KeyboardInterrupt:
        print("interrupted; stopping the children and nats-server", file=sys.stderr)
        interrupted = True
    finally:
        for child in children:
            stop(child)
        stop(server)
        shutil.rmtree(store_dir, ignore_errors=True)
    if interrupted:
        sys.exit(130)


def rate_mb_per_s(result: dict) -> float:
    return result["bytes"] / result["elapsed_s"] / 1e6


def report(baselines: list[dict], migrations: list[tuple[dict, dict]]) -> None:
    base_rate = statistics.median(rate_mb_per_s(b) for b in baselines)
    rate = statistics.median(rate_mb_per_s(source) for source, _ in migrations)
    source, destination = migrations[-1]
    print(f"median of {len(baselines)} runs:")
    print(f"baseline  nats-py raw chunks: {base_rate:8.1f} MB/s")
    print(f"migration page batches:       {rate:8.1f} MB/s ({rate * 8:.0f} mbps), "
          f"{source['bytes']:,} bytes per run")
    print(f"query-migrate of the last run: {json.dumps(source['query_migrate'])}")
    matches = [s["digest"] == d["digest"] for s, d in migrations]
    print(f"destination pages match the source in {sum(matches)} of {len(matches)} runs "
          f"({destination['normal_pages']:,} data pages applied per run)")
    print(f"ratio migration / baseline: {rate / base_rate:.2f} (goal >= 0.70)")


# Children: each runs one asyncio program and prints JSON lines.

def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


class CreditWindow:
    """Sender side of the credit window: blocks while `window` messages are unacknowledged."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.sent = 0
        self.acked = 0
        self._changed = asyncio.Event()

    async def on_ack(self, msg) -> None:
        self.acked = max(self.acked, _ACK.unpack(msg.data)[0])
        self._changed.set()

    async def wait_for_room(self) -> None:
        while self.sent - self.acked >= self.window:
            self._changed.clear()
            await self._changed.wait()

    async def wait_for_all(self) -> None:
        while self.acked < self.sent:
            self._changed.clear()
            await self._changed.wait()


async def send_with_window(nc, subject: str, payloads, credit: CreditWindow) -> int:
    total = 0
    for payload in payloads:
        await credit.wait_for_room()
        await nc.publish(subject, payload)
        credit.sent += 1
        total += len(payload)
    await nc.flush()
    await credit.wait_for_all()
    return total


async def receive(nc, subject: str, ack_subject: str, ack_every: int, handle, expected_messages: int | None):
    received = 0
    finished = asyncio.Event()

    async def on_message(msg) -> None:
        nonlocal received
        if msg.data == b"end":
            # The end marker takes a credit too, so its acknowledgement counts it.
            await nc.publish(ack_subject, _ACK.pack(received + 1))
            finished.set()
            return
        handle(msg.data)
        received += 1
        if received % ack_every == 0 or received == expected_messages:
            await nc.publish(ack_subject, _ACK.pack(received))

    await nc.subscribe(subject, cb=on_message, pending_bytes_limit=256 * 1024 * 1024)
    await nc.flush()
    emit({"ready": True})
    await finished.wait()
    return received


async def baseline_sender(args) -> None:
    nc = await nats.connect(args.url)
    credit = CreditWindow(args.window)
    await nc.subscribe("bench.baseline.ack", cb=credit.on_ack)
    count = args.memory_mib * (1 << 20) // PAGE_SIZE_BYTES // DEFAULT_RECORDS_PER_BATCH
    chunk = os.urandom(BATCH_BYTES)
    start = time.perf_counter()
    total = await send_with_window(nc, "bench.baseline.data", (chunk for _ in range(count)), credit)
    elapsed_s = time.perf_counter() - start
    credit.sent += 1
    await nc.publish("bench.baseline.data", b"end")
    await credit.wait_for_all()
    await nc.drain()
    emit({"bytes": total, "elapsed_s": elapsed_s})


async def baseline_receiver(args) -> None:
    nc = await nats.connect(args.url)
    size = 0

    def handle(data: bytes) -> None:
        nonlocal size
        size += len(data)

    count = await receive(nc, "bench.baseline.data", "bench.baseline.ack", args.ack_every, handle, None)
    await nc.drain()
    emit({"messages": count, "bytes": size})


def make_vm(memory_mib: int, sparse: bool) -> GuestMemory:
    page_count = memory_mib * (1 << 20) // PAGE_SIZE_BYTES
    store = None if sparse else ArenaFrameStore(page_count, prefault=True)
    host = HostMemory(page_count, store)
    return GuestMemory("bench-vm", host, AllocatedPageMap.allocate(host, page_count))


def memory_digest(memory: GuestMemory) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for page, page_digest in sorted(memory.page_digests().items()):
        digest.update(page.to_bytes(8, "big") + page_digest)
    return digest.hexdigest()


async def source(args) -> None:
    memory = make_vm(args.memory_mib, args.sparse)
    populate(memory, seed=1, nonzero_fraction=1.0)
    nc = await nats.connect(args.url)
    credit = CreditWindow(args.window)
    await nc.subscribe("bench.migration.ack", cb=credit.on_ack)
    engine = PrecopySource(memory.page_count)
    memory.start_dirty_log()
    start = time.perf_counter()
    step = engine.start(setup_time_s=0.0)
    while True:
        pass_start = time.perf_counter()
        counts = {"normal": 0, "zero": 0, "errors": []}

        def payloads(pages):
            # Keeps counts only, so each payload is freed once published.
            for batch in encode_pages(memory, pages):
                counts["normal"] += batch.normal_pages
                counts["zero"] += batch.zero_pages
                counts["errors"].extend(batch.error_pages)
                yield batch.payload

        sent = await send_with_window(nc, "bench.migration.data", payloads(step.guest_pages), credit)
        report = PassReport(sent, time.perf_counter() - pass_start, counts["normal"], counts["zero"],
                            tuple(counts["errors"]))
        if not isinstance(step, SendPass):
            done = engine.stop_copy_done(report)
            break
        step = engine.pass_done(report, memory.sync_dirty())
    elapsed_s = time.perf_counter() - start
    credit.sent += 1
    await nc.publish("bench.migration.data", b"end")
    await credit.wait_for_all()
    await nc.drain()
    emit({"bytes": done.stats.transferred_bytes, "elapsed_s": elapsed_s,
          "query_migrate": done.stats.to_query_migrate(), "digest": memory_digest(memory)})


async def destination(args) -> None:
    memory = make_vm(args.memory_mib, args.sparse)
    receiver = PrecopyDestination(memory)
    nc = await nats.connect(args.url)
    await receive(nc, "bench.migration.data", "bench.migration.ack", args.ack_every, receiver.apply, None)
    await nc.drain()
    receiver.complete()
    emit({"normal_pages": receiver.normal_pages, "digest": memory_digest(memory)})


ROLES = {
    "baseline-sender": baseline_sender,
    "baseline-receiver": baseline_receiver,
    "source": source,
    "destination": destination,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=1024, help="guest memory size in MiB")
    parser.add_argument("--window", type=int, default=32, help="maximum unacknowledged messages")
    parser.add_argument("--ack-every", type=int, default=4, help="messages per acknowledgement")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each pair; the medians are compared")
    parser.add_argument("--sparse", action="store_true",
                        help="keep frames in a SparseFrameStore instead of a prefaulted arena")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.memory_mib, args.window, args.ack_every, args.repeat) <= 0:
        parser.error("--memory-mib, --window, --ack-every and --repeat must be positive")
    if args.ack_every > args.window:
        parser.error(f"--ack-every {args.ack_every} must not exceed --window {args.window}")
    if args.role is None:
        parent(args)
    else:
        try:
            asyncio.run(ROLES[args.role](args))
        except KeyboardInterrupt:
            sys.exit(130)


if __name__ == "__main__":
    main()
