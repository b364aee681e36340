"""Memory errors and guest memory of a running cluster's hosts, for scripts and `dcfleet inject memory-error`.

Each coroutine takes a `client` with `request(subject, message, timeout_s)`, such
as agents._client.ClusterClient or an agent, and raises CommandFailed with the
host's error for bad input (unknown VM, frame or guest page out of range).
"""

from __future__ import annotations

import argparse
from typing import Any

import proto
from proto import subjects

from .._config import ConfigError

REQUEST_TIMEOUT_S = 10.0


async def inject_memory_error(client: Any, host: str, *, frame: int | None = None, vm: str | None = None,
                              guest_page: int | None = None, latent: bool = False) -> dict[str, Any]:
    """Mark a host frame bad, named by `frame` or by `vm` and `guest_page`; return the frame and its state.

    A latent error stays unknown until something reads the frame; a known one is
    reported by the hardware at once.
    """
    if (frame is None) == (vm is None):
        raise ValueError("name either frame, or vm and guest_page")
    if vm is not None and guest_page is None:
        raise ValueError("a VM needs guest_page")
    message = proto.MemoryErrorInject(frame=-1 if frame is None else frame, vm=vm or "",
                                      guest_page=-1 if guest_page is None else guest_page, latent=latent)
    return await client.request(subjects.host_command(host, "memory_error_inject"), message, REQUEST_TIMEOUT_S)


async def read_guest_page(client: Any, host: str, vm: str, guest_page: int) -> dict[str, Any]:
    """Make the guest read one page; `machine_check` in the result is true when the page is poisoned."""
    return await client.request(subjects.host_command(host, "vm_read"), proto.VmRead(vm, guest_page),
                                REQUEST_TIMEOUT_S)


async def vm_page_checksums(client: Any, host: str, vm: str) -> tuple[list[bytes], list[int]]:
    """Return the VM's per-page XXH3-128 checksums (zeros for a poisoned page) and its poisoned pages.

    Poisoned pages include pages on frames with a latent error that no read has found yet.
    """
    result = await client.request(subjects.host_command(host, "vm_memory"), proto.VmMemoryRequest(vm),
                                  REQUEST_TIMEOUT_S)
    raw = result["checksums"]
    return [raw[i:i + 16] for i in range(0, len(raw), 16)], list(result["poisoned_pages"])


def add_memory_error_options(parser: argparse.ArgumentParser) -> None:
    """Options of `dcfleet inject memory-error`."""
    group = parser.add_argument_group("memory-error", "where `dcfleet inject memory-error` puts the error")
    group.add_argument("--frame", type=int, metavar="F",
                       help="host frame number (4 KiB frames of the host's VM RAM, from 0)")
    group.add_argument("--vm", metavar="V", help="VM whose guest page gets the error (with --guest-page)")
    group.add_argument("--guest-page", type=int, metavar="P", help="guest page number of --vm, from 0")
    group.add_argument("--latent", action="store_true",
                       help="a latent error, found only when the frame is read (default: known to the hardware)")


async def run_inject_memory_error(args: argparse.Namespace) -> int:
    """Carry out `dcfleet inject memory-error --host H (--frame F | --vm V --guest-page P) [--latent]`."""
    from .._agent import CommandFailed, CommandTimeout
    from .._client import cluster_client

    if (args.frame is None) == (args.vm is None):
        raise ConfigError("memory-error needs either --frame F, or --vm V with --guest-page P")
    if args.vm is not None and args.guest_page is None:
        raise ConfigError("--vm needs --guest-page P")
    for option, value in (("--frame", args.frame), ("--guest-page", args.guest_page)):
        if value is not None and value < 0:
            raise ConfigError(f"invalid {option} {value}: frame and page numbers start at 0")
    async with cluster_client(args.state_dir, args.nats, source="cli.inject") as client:
        if client.config is not None and args.host not in {h.id for h in client.config.hosts}:
            hosts = ", ".join(h.id for h in client.config.hosts)
            raise ConfigError(f"unknown host {args.host!r}; the cluster has {hosts}")
        try:
            result = await inject_memory_error(client, args.host, frame=args.frame, vm=args.vm,
                                               guest_page=args.guest_page, latent=args.latent)
        except CommandFailed as exc:
            raise ConfigError(f"memory error not injected: {exc.error}") from None
        except CommandTimeout as exc:
            raise ConfigError(f"host {args.host} did not answer: {exc}") from None
    where = f"VM {result['vm']} guest page {result['guest_page']}, " if result["vm"] else ""
    kind = "a latent" if result["state"] == "latent" else "a known uncorrectable"
    print(f"{args.host}: {where}host frame {result['frame']} now has {kind} memory error")
    return 0
