"""`dcfleet provision-dpu`: install a DPU management OS through the host's BMC and show progress."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

import proto
from proto import subjects

from ._agent import CommandFailed, CommandTimeout
from ._client import ClusterClient, cluster_client
from ._config import ConfigError
from ._supervise import RestartPolicy, retry

COMMANDS = ("provision-dpu",)
DEFAULT_TIMEOUT_S = 300.0
# How long a host gets to respond to a status request before the command reports it down.
HOST_RESPONSE_TIMEOUT_S = 30.0
# One attempt of a request. A request lost in a network cut is sent again after this, under the same
# request id, so the host starts the provision once however many attempts reach it.
STATUS_ATTEMPT_S = 2.0
PROVISION_ATTEMPT_S = 5.0
# How long the host may take to reply to the provision request. It requests the DPU list from an
# unavailable BMC for up to agents.host._installer.LIST_RETRY_S (60 s) before it replies.
PROVISION_REPLY_TIMEOUT_S = 90.0
EXIT_FAILED = 1

_DESCRIPTION = """\
Ask the host's installer to provision the management OS of each DPU its BMC lists. The
installer picks the catalog image for the DPU's model (the newest, or --image), wraps it in
a UEFI FMP capsule signed with the cluster's capsule key and the next MonotonicCount, serves
it over HTTP on the host agent's address (loopback, or the agent's namespace address under
`dcfleet up --netns`) and hands its URI to the BMC with Redfish UpdateService.SimpleUpdate.
This command prints the BMC task's state and PercentComplete until the task ends.

A host that responds to no status request within 30 s is reported as not running. Requests lost
in a network cut are sent again; the host starts each provision once.

The events are dpu.provision_started, dpu.provision_progress, and dpu.provisioned or
dpu.provision_failed. A failed task leaves the previously installed OS in place.
"""

_EPILOG = """\
exit status: 0 when every DPU's task ended Completed; 1 when a task ended otherwise or no
result arrived within --timeout; 2 for an unknown host, an image not in the catalog for the
DPU's model, an unreachable BMC, or a cluster that is not running.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import add_cluster_options

    parser = commands.add_parser(
        "provision-dpu", help="install a DPU management OS image through the host's BMC (Redfish)",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", required=True, metavar="HOST", help="host whose DPUs to provision, e.g. h1")
    parser.add_argument("--image", default="", metavar="NAME",
                        help="catalog image name, e.g. bf3-mgmt-os-2.1.0 (default: the newest image for "
                        "each DPU's model, from agents/data/dpu-images/catalog.json)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"how long to wait for every task to end (default: {DEFAULT_TIMEOUT_S:g})")
    add_cluster_options(parser)


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be greater than 0, got {args.timeout}")
    try:
        return asyncio.run(_provision(args))
    except KeyboardInterrupt:
        print("dcfleet: interrupted; the BMC task keeps running (see `dcfleet events --type 'dpu.*'`)",
              file=sys.stderr)
        return 130


async def _provision(args: argparse.Namespace) -> int:
    async with cluster_client(args.state_dir, args.nats) as client:
        if client.config is not None:
            client.config.host(args.host)
        # Subscribe before the request, so no event of this provision is missed.
        events = await client.nc.subscribe(subjects.event("dpu.>"))
        try:
            reply = await request_provision(client, args.host, args.image)
        except CommandFailed as exc:
            raise ConfigError(exc.error) from None
        except HostNotResponding:
            raise ConfigError(f"host {args.host} did not respond within {HOST_RESPONSE_TIMEOUT_S:g} s; "
                              "is it running?") from None
        except CommandTimeout as exc:
            raise ConfigError(f"host {args.host} responded to a status request but not to the provision request "
                              f"within {exc.timeout_s:g} s; see its log, logs/host-{args.host}.log") from None
        provisions = {p["provision"]: p for p in reply.get("provisions", [])}
        for p in provisions.values():
            print(f"{args.host}: provisioning {p['dpu']} with {p['image']} (version {p['version']}), "
                  f"provision {p['provision']}", flush=True)
        return await _follow(events, provisions, args.timeout)


async def request_provision(client: ClusterClient, host: str, image: str) -> dict[str, Any]:
    """Ask a host to provision its DPUs; return its reply.

    Waits up to HOST_RESPONSE_TIMEOUT_S for the host to respond to a status
    request, then sends the provision request under one request id, again
    after each PROVISION_ATTEMPT_S without a reply. Raises CommandTimeout
    when the host does not reply and CommandFailed for an error reply.
    """
    status_subject = subjects.host_command(host, "status")
    try:
        await retry(lambda: client.request(status_subject, proto.HostStatusRequest(), STATUS_ATTEMPT_S),
                    (CommandTimeout,), HOST_RESPONSE_TIMEOUT_S, _attempt_wait())
    except CommandTimeout:
        raise HostNotResponding(status_subject, HOST_RESPONSE_TIMEOUT_S) from None
    message = proto.HostProvisionDpu(image=image, request_id=uuid.uuid4().hex)
    subject = subjects.host_command(host, "provision_dpu")
    try:
        return await retry(lambda: client.request(subject, message, PROVISION_ATTEMPT_S), (CommandTimeout,),
                           PROVISION_REPLY_TIMEOUT_S, _attempt_wait())
    except CommandTimeout:
        raise CommandTimeout(subject, PROVISION_REPLY_TIMEOUT_S) from None


class HostNotResponding(CommandTimeout):
    """The host replied to no status request in time, so its agent is down or cut off."""


def _attempt_wait() -> RestartPolicy:
    # Short pauses between attempts, since each attempt already waited for its reply.
    return RestartPolicy(initial_s=0.2, factor=2.0, max_s=1.0)


async def _follow(subscription: Any, provisions: dict[str, dict], timeout_s: float) -> int:
    """Print progress until every provision ended; return 0 only when all were Completed."""
    pending = set(provisions)
    failed = 0
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            print(f"dcfleet: no result within {timeout_s:g} s for {', '.join(sorted(pending))}", file=sys.stderr)
            return EXIT_FAILED
        try:
            msg = await subscription.next_msg(timeout=remaining)
        except asyncio.TimeoutError:
            continue
        try:
            event = proto.parse_event(msg.subject, msg.data)
        except proto.MessageRejected:
            continue
        if getattr(event, "provision", None) not in pending:
            continue
        if _print_event(event):
            pending.discard(event.provision)
            failed += isinstance(event, proto.DpuProvisionFailed)
    return EXIT_FAILED if failed else 0


def _print_event(event: Any) -> bool:
    """Print one provisioning event; return whether it ends its provision."""
    if isinstance(event, proto.DpuProvisionStarted):
        print(f"{event.dpu}: capsule MonotonicCount {event.monotonic_count} served at {event.image_uri}",
              flush=True)
    elif isinstance(event, proto.DpuProvisionProgress):
        print(f"{event.dpu}: task {event.task_state} {event.percent_complete}%", flush=True)
    elif isinstance(event, proto.DpuProvisioned):
        print(f"{event.dpu}: provisioned; FirmwareInventory reports version {event.version} ({event.task_uri})",
              flush=True)
        return True
    elif isinstance(event, proto.DpuProvisionFailed):
        state = f"task {event.task_state}: " if event.task_state else ""
        print(f"{event.dpu}: provisioning failed: {state}{event.reason}", file=sys.stderr, flush=True)
        return True
    return False
