"""`dcfleet migrate --vm V --to H`: live-migrate a VM and show the copy's progress and statistics."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from typing import Any

import proto
from proto import subjects

from ._config import ConfigError

COMMANDS = ("migrate",)
BAR_WIDTH = 30
MIB = 1 << 20


def add_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import add_cluster_options

    migrate = commands.add_parser(
        "migrate", help="live-migrate a VM to another host",
        description="Ask the migration coordinator to move a running VM by precopy: a full pass over its "
        "memory, passes over the pages dirtied meanwhile, then stop-and-copy once the rest fits the downtime "
        "limit at the measured bandwidth (or the iteration cap is reached). Pages on frames with memory "
        "errors travel as error records and are poisoned on the destination. Shows a progress bar, then the "
        "statistics under QEMU's query-migrate names. The VM stays on its host if anything fails.",
    )
    migrate.add_argument("--vm", required=True, help="VM id, e.g. vm0001")
    migrate.add_argument("--to", required=True, metavar="HOST", help="destination host id, e.g. h2")
    migrate.add_argument("--auto-converge", action="store_true",
                         help="throttle the guest's CPU when it dirties memory faster than the copy sends it")
    migrate.add_argument("--downtime-limit", type=int, default=300, metavar="MS",
                         help="longest pause of the VM for stop-and-copy, in milliseconds (default: 300)")
    migrate.add_argument("--max-iterations", type=int, default=30, metavar="N",
                         help="passes over dirtied pages before stop-and-copy is forced (default: 30)")
    migrate.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                         help="how long to wait for the outcome (default: 600)")
    migrate.add_argument("--json", action="store_true", help="print the final statistics as one JSON object")
    add_cluster_options(migrate)


def run(args: argparse.Namespace) -> int:
    if args.downtime_limit <= 0:
        raise ConfigError(f"--downtime-limit must be a positive number of milliseconds, got {args.downtime_limit}")
    if args.max_iterations < 0:
        raise ConfigError(f"--max-iterations must be 0 or more, got {args.max_iterations}")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if not args.vm:
        raise ConfigError("--vm must name a VM, e.g. vm0001")
    try:
        return asyncio.run(_migrate(args))
    except KeyboardInterrupt:
        # Ctrl-C before the wait for the outcome began.
        print(f"\n{_left_running(args, None)}", file=sys.stderr)
        return 130


def _left_running(args: argparse.Namespace, migration: str | None, reason: str = "interrupted") -> str:
    """Return a message: the migration goes on without this command, and how to learn its outcome."""
    named = f"migration {migration}" if migration else "the migration"
    state_dir = f" --state-dir {args.state_dir}" if args.state_dir else ""
    return (f"dcfleet: {reason}; the coordinator finishes or aborts {named} of {args.vm} on its own. "
            f"Its outcome: dcfleet events{state_dir} --type 'migration.[cf]*'")


async def _migrate(args: argparse.Namespace) -> int:
    from ._agent import CommandFailed, CommandTimeout
    from ._client import cluster_client

    async with cluster_client(args.state_dir, args.nats, source="cli.migrate") as client:
        if client.config is not None and args.to not in {h.id for h in client.config.hosts}:
            hosts = ", ".join(h.id for h in client.config.hosts)
            raise ConfigError(f"unknown host {args.to!r}; the cluster has {hosts}")
        progress = await client.nc.subscribe(subjects.event(proto.MigrationProgress.TYPE))
        request = proto.MigrationRequest(vm=args.vm, destination=args.to, downtime_limit_ms=args.downtime_limit,
                                         max_iterations=args.max_iterations, auto_converge=args.auto_converge)
        reply = asyncio.ensure_future(client.request(subjects.MIGRATION_REQUEST, request, args.timeout))
        bar = ProgressBar(sys.stderr)
        # Ctrl-C ends only this command: handled here, so the connection closes in order.
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        stop = asyncio.ensure_future(interrupted.wait())
        show = asyncio.ensure_future(_show_progress(progress, reply, args.vm, bar))
        try:
            await asyncio.wait({show, stop}, return_when=asyncio.FIRST_COMPLETED)
            if interrupted.is_set():
                bar.end()
                print(f"\n{_left_running(args, bar.migration)}", file=sys.stderr)
                return 130
            result = await reply
        except CommandFailed as exc:
            bar.end()
            print(f"dcfleet: migration of {args.vm} to {args.to} failed: {exc.error}", file=sys.stderr)
            return 1
        except CommandTimeout:
            bar.end()
            print(_left_running(args, bar.migration, f"no outcome within --timeout {args.timeout:g} s"),
                  file=sys.stderr)
            return 1
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            for task in (show, stop, reply):
                task.cancel()
            await asyncio.gather(show, stop, reply, return_exceptions=True)
            await progress.unsubscribe()
    bar.finish()
    print(json.dumps(result) if args.json else format_stats(args.vm, args.to, result))
    return 0


async def _show_progress(subscription: Any, reply: asyncio.Future, vm: str, bar: "ProgressBar") -> None:
    while not reply.done():
        next_msg = asyncio.ensure_future(subscription.next_msg(timeout=None))
        try:
            done, _ = await asyncio.wait({next_msg, reply}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not next_msg.done():
                next_msg.cancel()
                await asyncio.gather(next_msg, return_exceptions=True)
        if next_msg not in done:
            return
        try:
            envelope = proto.decode(next_msg.result().data)
        except proto.MessageRejected:
            continue
        if envelope.data.get("vm") == vm and isinstance(envelope.data.get("stats"), dict):
            bar.migration = str(envelope.data.get("migration") or "") or bar.migration
            bar.update(envelope.data["stats"])


class ProgressBar:
    """One line redrawn in place on a terminal, one line per update otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.drawn = False
        # The migration's id, once a progress event names it.
        self.migration: str | None = None

    def update(self, stats: dict[str, Any]) -> None:
        ram = stats.get("ram", {})
        total = ram.get("total") or 1
        done = max(0.0, min(1.0, 1 - ram.get("remaining", total) / total))
        filled = round(done * BAR_WIDTH)
        line = (f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done:4.0%}  "
                f"pass {ram.get('dirty-sync-count', 0) + 1}  "
                f"sent {ram.get('transferred', 0) / MIB:.1f} MiB  "
                f"left {ram.get('remaining', 0) / MIB:.1f} MiB  {ram.get('mbps', 0):.0f} mbps  "
                f"poisoned {ram.get('poisoned-pages', 0)}")
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn and self.tty:
            self.stream.write(f"\r[{'#' * BAR_WIDTH}] 100%\n")
            self.stream.flush()

    def end(self) -> None:
        if self.drawn and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def format_stats(vm: str, destination: str, result: dict[str, Any]) -> str:
    ram = result.get("ram", {})
    lines = [
        f"migration {result.get('migration')}: {vm} now runs on {destination} "
        f"({result.get('status')}, stop-and-copy: {result.get('stop_reason')})",
        f"  total-time         {result.get('total-time')} ms",
        f"  setup-time         {result.get('setup-time')} ms",
        f"  downtime           {result.get('downtime')} ms",
        f"  expected-downtime  {result.get('expected-downtime', '-')} ms",
    ]
    if "cpu-throttle-percentage" in result:
        lines.append(f"  cpu-throttle-percentage {result['cpu-throttle-percentage']}")
    lines.append("  ram:")
    for name in ("transferred", "remaining", "total", "duplicate", "normal", "normal-bytes", "dirty-pages-rate",
                 "mbps", "pages-per-second", "dirty-sync-count", "precopy-bytes", "downtime-bytes",
                 "poisoned-pages"):
        value = ram.get(name)
        shown = f"{value:.1f}" if isinstance(value, float) else value
        lines.append(f"    {name:<18} {shown}")
    return "\n".join(lines)
