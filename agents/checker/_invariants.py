"""The history checker: replays stored events and names those that break an invariant.

Pure: it reads a list of events (as `dcfleet events --json` prints them) and
returns a Report. Invariants, by the name each violation carries:

- `sequence`: stream sequences have no gaps, and no event id is stored twice.
- `placement`: after `vm.placed`, a VM runs on exactly one host until a
  reported `vm.lost`; `migration.completed` moves it from its source, and host
  heartbeats, which list the VMs a host really runs, agree with that.
- `migration`: every `migration.started` ends, and after `migration.failed` the
  VM is still on its source. A migration has not ended when the same VM starts
  another one, or when its destination's heartbeats show the VM running there
  for OUTCOME_GRACE_S without an outcome.
- `memory`: no page that was not reported poisoned differs after a migration.
- `secure-boot`: no VM is placed on, or migrated to, a host without a
  `host.booted` since its latest power-on, boot failure, quarantine or power-off.
- `power-off`: no host is powered off while it runs VMs.
- `command`: every accepted command (see _commands.py) reaches a terminal event.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from ._commands import COMMAND_KINDS, CommandKind, kinds_by_start, kinds_by_terminal
from ._model import Event, Report, Unfinished, Violation

UNTRUSTING_TYPES = ("host.power_on", "host.boot_failed", "host.quarantined", "host.power_off")
# How long a destination may run a migrated VM before the migration's outcome is stored. The
# coordinator stores it right after the commit. A restart of the coordinator (backoff up to
# 10 s) or of the broker (event publishing retries for 60 s) can delay it, so the margin is wide.
OUTCOME_GRACE_S = 120.0


@dataclass
class _Place:
    host: str
    event: Event


def check_events(records: list[dict[str, Any]]) -> Report:
    """Check a history given as event dicts (seq, id, type, time, source, data)."""
    return check(sorted((Event.from_record(i, r) for i, r in enumerate(records)), key=lambda e: e.seq))


def check(events: list[Event]) -> Report:
    """Check a history of events sorted by stream sequence."""
    checker = _Checker()
    checker.check_sequence(events)
    for event in events:
        checker.apply(event)
    checker.finish()
    report = checker.report
    report.events = len(events)
    report.first_seq = events[0].seq if events else 0
    report.last_seq = events[-1].seq if events else 0
    report.counts = dict(Counter(e.type for e in events))
    return report


class _Checker:
    def __init__(self) -> None:
        self.report = Report()
        self.location: dict[str, _Place] = {}
        # Sender time of the latest event that moved or ended a VM: heartbeats
        # built before it describe the earlier placement.
        self.changed_at: dict[str, float] = {}
        self.migrating: dict[str, Event] = {}
        # Per migrating VM: the first destination heartbeat that lists it as running.
        self.running_at_destination: dict[str, Event] = {}
        self.trusted: dict[str, bool] = {}
        self.trust_event: dict[str, Event] = {}
        self.lost_to_power: dict[str, list[Event]] = defaultdict(list)
        self.pending: dict[tuple[str, str], Event] = {}
        self.owner_starts: dict[str, list[Event]] = defaultdict(list)
        self.agent_starts: dict[str, list[Event]] = defaultdict(list)
        self.reported_heartbeat: set[tuple[str, str, str]] = set()
        self.starts = kinds_by_start()
        self.terminals = kinds_by_terminal()

    def violate(self, invariant: str, message: str, *events: Event | None) -> None:
        cited = tuple(e for e in events if e is not None)
        self.report.violations.append(Violation(invariant, message, cited))

    # ---- sequence -----------------------------------------------------------

    def check_sequence(self, events: list[Event]) -> None:
        previous: Event | None = None
        by_id: dict[str, Event] = {}
        for event in events:
            if previous is not None and event.seq == previous.seq:
                self.violate("sequence", f"stream sequence {event.seq} appears twice", previous, event)
            elif previous is not None and event.seq != previous.seq + 1:
                missing = event.seq - previous.seq - 1
                self.violate("sequence", f"{missing} events missing between sequences {previous.seq} and {event.seq}",
                             previous, event)
            first = by_id.get(event.id)
            if first is not None:
                self.violate("sequence", f"event id {event.id} ({event.type}) stored twice", first, event)
            else:
                by_id[event.id] = event
            previous = event

    # ---- replay ---------------------------------------------------------------

    def apply(self, event: Event) -> None:
        handler = getattr(self, "on_" + event.type.replace(".", "_"), None)
        if handler is not None:
            handler(event, event.data)
        if event.type in UNTRUSTING_TYPES:
            self._set_trust(event, False)
        self._track_command(event)

    def on_agent_started(self, event: Event, data: dict[str, Any]) -> None:
        self.owner_starts[str(data.get("kind"))].append(event)
        self.agent_starts[str(data.get("agent"))].append(event)

    def on_host_booted(self, event: Event, data: dict[str, Any]) -> None:
        self._set_trust(event, True)

    def _set_trust(self, event: Event, trusted: bool) -> None:
        host = str(event.data.get("host"))
        self.trusted[host] = trusted
        self.trust_event[host] = event

    def _require_trusted(self, host: str, vm: str, event: Event) -> None:
        if not self.trusted.get(host, False):
            last = self.trust_event.get(host)
            why = f"its latest boot state is {last.type}" if last else "it never reported host.booted"
            self.violate("secure-boot", f"VM {vm} placed on host {host}, but {why}", last, event)

    def on_vm_placed(self, event: Event, data: dict[str, Any]) -> None:
        vm, host = str(data.get("vm")), str(data.get("host"))
        current = self.location.get(vm)
        if current is not None:
            where = "again on" if current.host == host else f"on {host} while it runs on"
            self.violate("placement", f"VM {vm} placed {where} {current.host}", current.event, event)
        self._require_trusted(host, vm, event)
        self._move(vm, host, event)

    def on_vm_lost(self, event: Event, data: dict[str, Any]) -> None:
        vm, host = str(data.get("vm")), str(data.get("host"))
        current = self.location.get(vm)
        if current is None or current.host != host:
            where = current.host if current else "no host"
            self.violate("placement", f"VM {vm} reported lost on {host}, but it runs on {where}",
                         current.event if current else None, event)
        else:
            del self.location[vm]
        self.changed_at[vm] = event.time
        if "power" in str(data.get("reason", "")):
            self.lost_to_power[host].append(event)

    def on_migration_started(self, event: Event, data: dict[str, Any]) -> None:
        vm = str(data.get("vm"))
        earlier = self.migrating.get(vm)
        if earlier is not None:
            self.violate("migration", f"migration {earlier.data.get('migration')} of VM {vm} never ended before "
                         f"migration {data.get('migration')} of the same VM started", earlier, event)
            # Reported here, so not again as a command that never ended.
            self.pending.pop(("migration", str(earlier.data.get("migration"))), None)
            self.running_at_destination.pop(vm, None)
        current = self.location.get(vm)
        if current is None or current.host != data.get("source"):
            where = current.host if current else "no host"
            self.violate("migration", f"migration {data.get('migration')} of VM {vm} starts from "
                         f"{data.get('source')}, but the VM runs on {where}",
                         current.event if current else None, event)
        self.migrating[vm] = event

    def on_migration_completed(self, event: Event, data: dict[str, Any]) -> None:
        vm, source, destination = str(data.get("vm")), str(data.get("source")), str(data.get("destination"))
        self.migrating.pop(vm, None)
        self.running_at_destination.pop(vm, None)
        current = self.location.get(vm)
        if current is None or current.host != source:
            where = current.host if current else "no host"
            self.violate("placement", f"VM {vm} migrated from {source}, but it ran on {where}",
                         current.event if current else None, event)
        self._require_trusted(destination, vm, event)
        problem = memory_problem(data)
        if problem:
            self.violate("memory", f"migration {data.get('migration')} of VM {vm}: {problem}", event)
        self._move(vm, destination, event)

    def on_migration_failed(self, event: Event, data: dict[str, Any]) -> None:
        vm, source = str(data.get("vm")), str(data.get("source"))
        self.migrating.pop(vm, None)
        self.running_at_destination.pop(vm, None)
        current = self.location.get(vm)
        if current is None or current.host != source:
            where = current.host if current else "no host"
            self.violate("migration", f"migration {data.get('migration')} of VM {vm} failed, but the VM "
                         f"runs on {where}, not its source {source}", current.event if current else None, event)
        self.changed_at[vm] = event.time

    def _move(self, vm: str, host: str, event: Event) -> None:
        self.location[vm] = _Place(host, event)
        self.changed_at[vm] = event.time

    def on_host_power_off(self, event: Event, data: dict[str, Any]) -> None:
        host = str(data.get("host"))
        running = [p.event for vm, p in sorted(self.location.items()) if p.host == host]
        lost = self.lost_to_power.pop(host, [])
        if running or lost:
            names = sorted({str(e.data.get("vm")) for e in running + lost})
            self.violate("power-off", f"host {host} powered off while running {', '.join(names)}",
                         *running, *lost, event)

    def on_host_heartbeat(self, event: Event, data: dict[str, Any]) -> None:
        host = str(data.get("host"))
        listed = data.get("vms") if isinstance(data.get("vms"), dict) else {}
        for vm in listed:
            if vm in self.migrating:
                self._check_outcome_overdue(vm, host, event)
                continue
            if event.time < self.changed_at.get(vm, 0.0):
                continue
            current = self.location.get(vm)
            if current is None:
                self._heartbeat_violation("runs-unplaced", vm, host, f"host {host} runs VM {vm}, "
                                          "which the history places on no host", None, event)
            elif current.host != host:
                self._heartbeat_violation("two-hosts", vm, host, f"VM {vm} runs on {host} and on {current.host}",
                                          current.event, event)
        for vm, place in self.location.items():
            if place.host != host or vm in listed or vm in self.migrating:
                continue
            if event.time >= self.changed_at.get(vm, 0.0):
                self._heartbeat_violation("vanished", vm, host, f"VM {vm} placed on {host} no longer runs there "
                                          "and was not reported lost", place.event, event)

    def _check_outcome_overdue(self, vm: str, host: str, event: Event) -> None:
        started = self.migrating[vm]
        if host != started.data.get("destination"):
            return
        first = self.running_at_destination.setdefault(vm, event)
        if event.time - first.time > OUTCOME_GRACE_S:
            self.violate("migration", f"migration {started.data.get('migration')} of VM {vm} has no outcome, "
                         f"though {host} has run the VM for {event.time - first.time:.0f} s", started, first, event)
            # One report per migration: it leaves the pending commands, and from here on
            # the VM counts as running where the heartbeats show it.
            self.migrating.pop(vm)
            self.running_at_destination.pop(vm)
            self.pending.pop(("migration", str(started.data.get("migration"))), None)
            self._move(vm, host, event)

    def _heartbeat_violation(self, kind: str, vm: str, host: str, message: str, *events: Event | None) -> None:
        # One report per VM, host and kind: a wrong placement repeats in every heartbeat.
        key = (kind, vm, host)
        if key not in self.reported_heartbeat:
            self.reported_heartbeat.add(key)
            self.violate("placement", message, *events)

    # ---- commands -------------------------------------------------------------

    def _track_command(self, event: Event) -> None:
        kind = self.starts.get(event.type)
        if kind is not None and kind.accepted(event.data):
            key = (kind.name, kind.key(event.data))
            earlier = self.pending.get(key)
            if earlier is not None:
                self.violate("command", f"{kind.name} {key[1]} accepted again before it ended", earlier, event)
            self.pending[key] = event
            return
        kind = self.terminals.get(event.type)
        if kind is not None:
            key = (kind.name, kind.key(event.data))
            if self.pending.pop(key, None) is None:
                self.violate("command", f"{event.type} for {kind.name} {key[1]} that was never accepted", event)

    def finish(self) -> None:
        owners = {kind.name: kind for kind in COMMAND_KINDS}
        for (name, key), start in sorted(self.pending.items(), key=lambda item: item[1].seq):
            kind: CommandKind = owners[name]
            owner = start.source if kind.owner_is_sender else kind.owner_kind
            starts = self.agent_starts.get(owner, []) if kind.owner_is_sender else self.owner_starts.get(owner, [])
            restarts = [e for e in starts if e.seq > start.seq]
            if restarts:
                self.violate("command", f"{name} {key} never ended, though its owner ({owner}) "
                             "restarted after accepting it", start, restarts[0])
            else:
                self.report.unfinished.append(Unfinished(name, key, start))


def memory_problem(data: dict[str, Any]) -> str:
    """Describe how a completed migration changed memory it should not have, or return ''.

    A per-page form (`differing_pages`, `poisoned_pages`) allows differences on
    poisoned pages only; otherwise the whole-memory digests must be equal.
    """
    poisoned = set(data.get("poisoned_pages") or ())
    if "differing_pages" in data:
        unexpected = sorted(set(data.get("differing_pages") or ()) - poisoned)
        if unexpected:
            shown = ", ".join(str(p) for p in unexpected[:8])
            return f"{len(unexpected)} pages not reported poisoned differ (pages {shown})"
        return ""
    source, destination = data.get("source_digest"), data.get("destination_digest")
    if poisoned:
        # NOTE: whole-memory digests cannot tell a poisoned page from any other;
        # without `differing_pages` such a migration is not judged.
        return ""
    if source != destination:
        return f"destination digest {destination} differs from source digest {source}"
    return ""
