"""`dcfleet pagetable dump`: print a host's page tables or a VM's stage-2 tables."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

import proto
from proto import subjects

from ._agent import CommandFailed, CommandTimeout
from ._client import cluster_client
from ._config import ConfigError

COMMANDS = ("pagetable",)
DEFAULT_TIMEOUT_S = 10.0
EXIT_WRITABLE_EXECUTABLE = 1

_DESCRIPTION = """\
Ask a booted host agent for its page tables and print them as merged ranges, one per line,
in the manner of Linux's ptdump: input range, size, rights (RW or ro, then x or NX), memory
type and the output address the range starts at.

Without --vm it prints the hypervisor's tables that the boot loader installed (stage 1,
identity-mapped host-physical addresses). With --vm it prints that VM's stage-2 tables:
guest-physical ranges and the host frames behind them.

The last line checks W^X: whether any range is both writable and executable.
"""

_EPILOG = """\
exit status: 0 when the tables were printed and, for the hypervisor's tables, no range is
writable and executable; 1 when a hypervisor range is writable and executable (stage-2
guest RAM is writable and executable by design and does not count); 2 for an unknown host
or VM, a host that is powered off or not booted, or a cluster that cannot be reached.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import add_cluster_options

    pagetable = commands.add_parser(
        "pagetable", help="inspect the page tables of a running host",
        description="Inspect the page tables host agents build at boot and for each VM.",
    )
    actions = pagetable.add_subparsers(dest="pagetable_action", metavar="ACTION", required=True)
    dump = actions.add_parser(
        "dump", help="print a host's tables or a VM's stage-2 tables as merged ranges",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dump.add_argument("--host", required=True, metavar="HOST", help="host id, e.g. h1")
    dump.add_argument("--vm", metavar="VM", help="print this VM's stage-2 tables instead, e.g. vm0001")
    dump.add_argument("--json", action="store_true",
                      help="print the host's reply as one JSON object (ranges with numeric fields)")
    dump.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                      help=f"how long to wait for the host's reply (default: {DEFAULT_TIMEOUT_S:g})")
    add_cluster_options(dump)


@dataclass(frozen=True)
class DumpReply:
    """A validated ``host.pagetable_dump`` result."""

    host: str
    arch: str
    table_format: str
    stage: int
    vm: str
    root_address: int
    lines: list[str]
    writable_executable_lines: list[str]


class InvalidDumpReply(ValueError):
    """The host's reply lacks a field or has one of the wrong type."""


def parse_dump_reply(result: dict[str, Any]) -> DumpReply:
    """Check the fields of a dump reply; raise InvalidDumpReply naming the first bad one."""
    fields = {}
    for name, kind in (("host", str), ("arch", str), ("table_format", str), ("stage", int),
                       ("vm", str), ("root_address", int), ("lines", list), ("ranges", list)):
        value = result.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidDumpReply(f"field {name!r} is {value!r}, expected {kind.__name__}")
        fields[name] = value
    lines, ranges = fields.pop("lines"), fields.pop("ranges")
    if len(lines) != len(ranges) or not all(isinstance(line, str) for line in lines):
        raise InvalidDumpReply("'lines' must hold one string per range")
    flagged = []
    for line, mapped in zip(lines, ranges):
        if not isinstance(mapped, dict):
            raise InvalidDumpReply(f"range {mapped!r} is not a map")
        if mapped.get("writable") is True and mapped.get("executable") is True:
            flagged.append(line)
    return DumpReply(lines=lines, writable_executable_lines=flagged, **fields)


def render_dump(reply: DumpReply) -> str:
    """Render the header, the ptdump lines and the W^X verdict."""
    if reply.vm:
        title = f"{reply.host} VM {reply.vm} stage 2 (guest-physical -> host-physical)"
    else:
        title = f"{reply.host} hypervisor stage 1 ({reply.arch})"
    lines = [f"---[ {title}, {reply.table_format}, root 0x{reply.root_address:016x} ]---"]
    lines.extend(reply.lines)
    lines.append(_verdict(reply))
    lines.extend(f"  {line}" for line in reply.writable_executable_lines if not reply.vm)
    return "\n".join(lines)


def _verdict(reply: DumpReply) -> str:
    count = len(reply.writable_executable_lines)
    total = f"{len(reply.lines)} ranges"
    if not count:
        return f"W^X: no range is both writable and executable ({total})"
    noun = "range is" if count == 1 else "ranges are"
    if reply.vm:
        return (f"W^X: {count} {noun} writable and executable at stage 2, as guest RAM is by design; "
                "the guest's own stage-1 tables decide what it may execute")
    return f"W^X: VIOLATION: {count} {noun} both writable and executable ({total}):"


def run(args: argparse.Namespace) -> int:
    for label, value in (("host", args.host), ("VM", args.vm)):
        if value is not None and not subjects.is_token(value):
            raise ConfigError(f"invalid {label} id {value!r}: use letters, digits, '-' and '_'")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be greater than 0, got {args.timeout}")
    try:
        result = asyncio.run(_request_dump(args))
    except KeyboardInterrupt:
        return 130
    try:
        reply = parse_dump_reply(result)
    except InvalidDumpReply as exc:
        print(f"dcfleet: error: invalid pagetable dump reply from host {args.host}: {exc}",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render_dump(reply))
    if reply.writable_executable_lines and not reply.vm:
        return EXIT_WRITABLE_EXECUTABLE
    return 0


async def _request_dump(args: argparse.Namespace) -> dict[str, Any]:
    async with cluster_client(args.state_dir, args.nats) as client:
        if client.config is not None:
            client.config.host(args.host)  # raises ConfigError listing the cluster's hosts
        subject = subjects.host_command(args.host, "pagetable_dump")
        try:
            return await client.request(subject, proto.PagetableDumpRequest(vm=args.vm or ""),
                                        args.timeout)
        except CommandTimeout:
            raise ConfigError(
                f"no host agent {args.host!r} replied within {args.timeout:g} s; "
                "check --host and that the cluster runs"
            ) from None
        except CommandFailed as exc:
            raise ConfigError(f"pagetable dump on host {args.host} failed: {exc.error}") from None
