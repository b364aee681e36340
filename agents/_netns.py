"""Create, cut and delete the network namespaces of `dcfleet up --netns` with iproute2.

The plan (names, addresses) comes from agents._netns_plan. What exists is
recorded in `<state dir>/netns.json` before it is created, so a run that
crashed leaves a record that the next `up` on the same state dir deletes.
Namespaces and links carrying the state dir's tag are deleted too when the
record is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ._config import ConfigError
from ._netns_plan import (
    AGENT_INTERFACE,
    LINK_PREFIX,
    NAMESPACE_PREFIX,
    NetnsPlan,
    bridge_tag,
    leftover_bridge_hint,
    overlapping_routes,
    state_dir_tag,
)

log = structlog.get_logger()

RECORD_NAME = "netns.json"
IP_TIMEOUT_S = 10.0
# How long processes left in a namespace get after SIGTERM before SIGKILL.
LEFTOVER_STOP_S = 5.0


class NetnsError(ConfigError):
    """An `ip` command failed; carries the command and its error output."""

    def __init__(self, command: list[str], detail: str) -> None:
        self.command = command
        self.detail = detail
        super().__init__(f"`{' '.join(command)}` failed: {detail}")


def record_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / RECORD_NAME


def read_record(state_dir: str | Path) -> NetnsPlan | None:
    """Return the namespaces recorded in a state dir, or None when it has no record."""
    path = record_path(state_dir)
    try:
        return NetnsPlan.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _write_record(state_dir: str | Path, plan: NetnsPlan) -> None:
    path = record_path(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


# ---- the ip command ----------------------------------------------------------------


def _ip_path() -> str | None:
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None)


def find_ip() -> str:
    found = _ip_path()
    if found is None:
        raise ConfigError("--netns needs the `ip` command of iproute2, which was not found; "
                          "install iproute2 (Debian: apt-get install iproute2)")
    return found


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [find_ip(), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NetnsError(command, f"no result within {IP_TIMEOUT_S:g} s") from None
    if check and result.returncode != 0:
        raise NetnsError(command, result.stderr.strip() or f"exit status {result.returncode}")
    return result


def _ip_json(*args: str) -> list[dict[str, Any]]:
    output = ip("-j", *args).stdout.strip()
    return json.loads(output) if output else []


def preflight() -> None:
    """Check that this process may create namespaces: Linux, root, and a working `ip netns`."""
    if not sys.platform.startswith("linux"):
        raise ConfigError(f"--netns needs Linux network namespaces; this is {sys.platform}")
    if os.geteuid() != 0:
        raise ConfigError("--netns creates network namespaces, which needs root; run `dcfleet up --netns` as root")
    try:
        ip("netns", "list")
    except NetnsError as exc:
        raise ConfigError(f"--netns cannot use network namespaces here: {exc.detail}") from None


def namespaces() -> list[str]:
    """Names of the namespaces that `ip netns` lists."""
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def links() -> list[str]:
    """Names of the links of the root namespace."""
    return [entry["ifname"] for entry in _ip_json("link", "show")]


def exec_prefix(namespace: str) -> list[str]:
    """Command prefix that runs a program in a namespace. `ip netns exec` execs it, so the pid stays."""
    return [find_ip(), "netns", "exec", namespace]


def set_link(link: str, up: bool) -> None:
    ip("link", "set", "dev", link, "up" if up else "down")


def link_is_up(link: str) -> bool:
    entries = _ip_json("link", "show", "dev", link)
    return bool(entries) and "UP" in entries[0].get("flags", [])


# ---- create and delete ------------------------------------------------------------


def check_subnet_free(plan: NetnsPlan) -> None:
    """Reject a subnet that a route of the root namespace already covers.

    When the route goes through the bridge of another state dir's cluster, the
    error states whether that cluster still runs and how to remove what it left.
    """
    routes = _ip_json("-4", "route", "show")
    clashes = overlapping_routes(plan.subnet, routes, plan.bridge)
    if not clashes:
        return
    hints = []
    for device in sorted({route.split(" dev ", 1)[1] for route in clashes}):
        tag = bridge_tag(device)
        if tag is not None:
            owned = [n for n in namespaces() if n.startswith(f"{NAMESPACE_PREFIX}{tag}-")]
            hints.append(leftover_bridge_hint(device, owned, any(pids_in(n) for n in owned)))
    raise ConfigError(f"--netns-subnet {plan.subnet} overlaps routes of this machine ({'; '.join(clashes)}); "
                      "pass another private subnet" + "".join(f". {hint}" for hint in hints))


def create(state_dir: str | Path, plan: NetnsPlan) -> None:
    """Create the bridge and every agent namespace. Recorded first, so a failure part way is cleaned up."""
    _write_record(state_dir, plan)
    prefix = f"/{plan.prefix_length}"
    ip("link", "add", "name", plan.bridge, "type", "bridge")
    ip("addr", "add", plan.bridge_address + prefix, "dev", plan.bridge)
    ip("link", "set", "dev", plan.bridge, "up")
    for agent in plan.agents.values():
        ip("netns", "add", agent.namespace)
        ip("link", "add", "name", agent.link, "type", "veth", "peer", "name", AGENT_INTERFACE,
           "netns", agent.namespace)
        ip("link", "set", "dev", agent.link, "master", plan.bridge)
        ip("link", "set", "dev", agent.link, "up")
        ip("-n", agent.namespace, "addr", "add", agent.address + prefix, "dev", AGENT_INTERFACE)
        ip("-n", agent.namespace, "link", "set", "dev", AGENT_INTERFACE, "up")
        ip("-n", agent.namespace, "link", "set", "dev", "lo", "up")
    log.debug("netns.created", bridge=plan.bridge, subnet=plan.subnet, namespaces=len(plan.agents))


@dataclass
class Deleted:
    """Namespaces and links that `delete` removed, and the pids it stopped in each namespace."""

    names: list[str] = field(default_factory=list)
    stopped: dict[str, list[int]] = field(default_factory=dict)


def may_have_leftovers(state_dir: str | Path) -> bool:
    """Whether `delete` should run for a state dir: it has a record, or this process is root with `ip`.

    Without a record, leftovers are found by the state dir's tag, which needs
    `ip netns list`; namespaces can only exist where root created them.
    """
    if record_path(state_dir).exists():
        return True
    return os.geteuid() == 0 and _ip_path() is not None


def delete(state_dir: str | Path) -> Deleted:
    """Delete every namespace and link of the state dir's runs, recorded or tagged; return what was deleted.

    Processes still running in one of those namespaces (agents of a supervisor
    that was killed) get SIGTERM, then SIGKILL, first.
    """
    plan = read_record(state_dir)
    tag = plan.tag if plan is not None else state_dir_tag(state_dir)
    namespace_prefix, link_prefix = f"{NAMESPACE_PREFIX}{tag}-", f"{LINK_PREFIX}{tag}"
    existing = namespaces()
    doomed = [n for n in existing if n.startswith(namespace_prefix)]
    if plan is not None:
        doomed += [a.namespace for a in plan.agents.values() if a.namespace in existing and a.namespace not in doomed]
    deleted = Deleted()
    for namespace in doomed:
        stopped = _stop_processes_in(namespace)
        if stopped:
            deleted.stopped[namespace] = stopped
    # Deleting the root-side end of a veth pair deletes both ends at once. A deleted namespace
    # destroys its end only later, in the kernel's cleanup work.
    for link in links():
        if link.startswith(link_prefix):
            _delete_link(link)
            deleted.names.append(link)
    for namespace in doomed:
        ip("netns", "delete", namespace)
        deleted.names.append(namespace)
    record_path(state_dir).unlink(missing_ok=True)
    if deleted.names:
        log.debug("netns.deleted", deleted=deleted.names, stopped=deleted.stopped)
    return deleted


def _delete_link(link: str) -> None:
    result = ip("link", "delete", "dev", link, check=False)
    # A veth disappears with its peer, so an earlier deletion in this loop may have taken it.
    if result.returncode != 0 and link in links():
        raise NetnsError(["ip", "link", "delete", "dev", link], result.stderr.strip())


def _stop_processes_in(namespace: str) -> list[int]:
    """Stop the processes running in a namespace; return their pids."""
    pids = pids_in(namespace)
    if not pids:
        return []
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_STOP_S
    while pids_in(namespace) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(pids_in(namespace), signal.SIGKILL)
    return pids


def pids_in(namespace: str) -> list[int]:
    result = ip("netns", "pids", namespace, check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
