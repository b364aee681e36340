"""Source side of a live migration in the host agent: precopy over the bus, then a lease.

`migrate_send` runs the precopy state machine of migration_core: a full pass, passes
over dirtied pages, then stop-and-copy with the VM paused. Batches are published
to the destination on the migration's data subject, numbered, with at most
BATCHES_IN_FLIGHT unacknowledged (migration_core.CreditWindow). The VM stays
here, paused, until the coordinator sends `migrate_finish` (drop it) or
`migrate_abort` (resume it). If neither comes
within SOURCE_RESUME_TIMEOUT_S, the source aborts the destination itself and
resumes the VM, so a lost coordinator never leaves the VM stopped or running twice.
That resume publishes `vm.resumed`, never `migration.failed`: the coordinator alone
publishes a migration's outcome.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

import proto
from proto import subjects

from .._agent import CommandFailed, CommandTimeout, HandlerError
from ..migration_core import (
    PAGE_SIZE_BYTES,
    AckOutOfRange,
    CreditWindow,
    PageChecksums,
    PassReport,
    PrecopyConfig,
    PrecopySource,
    SendPass,
    encode_pages,
)
from ._memory import GuestVm

# Unacknowledged batches at most, and batches per acknowledgement.
BATCHES_IN_FLIGHT = 32
BATCHES_PER_ACK = 4
# The status of the message nats-server sends to a reply subject when no one subscribes.
NO_RESPONDERS_STATUS = "503"
BATCH_TIMEOUT_S = 5.0
PROGRESS_INTERVAL_S = 0.5
SOURCE_RESUME_TIMEOUT_S = 15.0
ABORT_RETRY_S = 2.0


class PageTransferFailed(Exception):
    """The destination did not take a page batch; the migration cannot go on."""

    def __init__(self, destination: str, error: str) -> None:
        self.destination = destination
        self.error = error
        super().__init__(f"destination {destination} did not take a page batch: {error}")


@dataclass
class Outgoing:
    """A migration this host sends."""

    migration: str
    vm: GuestVm
    destination: str
    engine: PrecopySource
    subject: str
    # Checksums of the pages as sent; the digest at the pause hashes this table, not the memory.
    checksums: PageChecksums | None = None
    flow: CreditWindow = field(default_factory=lambda: CreditWindow(BATCHES_IN_FLIGHT, BATCHES_PER_ACK))
    # Acknowledgements arrive on `<ack_inbox>.<seq>`; `acked` is set each time one does.
    ack_inbox: str = ""
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_before_pass: int = 0
    # time.monotonic() at the start of the migration and of the current pass.
    started_at: float = 0.0
    pass_started_at: float = 0.0
    error: Exception | None = None
    progress_at: float = 0.0

    def ids(self, source: str) -> dict[str, str]:
        return {"migration": self.migration, "vm": self.vm.id, "source": source, "destination": self.destination}


class MigrationSourceMixin:
    """Source handlers of a host agent; needs `vms`, `outgoing`, `store` and `ram`."""

    async def on_migrate_send(self, message: proto.MigrateSend, _msg: Any) -> dict[str, Any]:
        vm = self.vms.get(message.vm)
        if vm is None:
            raise HandlerError(f"VM {message.vm} does not run on {self.id}")
        if message.vm in self.outgoing.values():
            raise HandlerError(f"VM {message.vm} is already migrating")
        try:
            config = PrecopyConfig(downtime_limit_s=message.downtime_limit_ms / 1000,
                                   max_iterations=message.max_iterations, auto_converge=message.auto_converge)
        except ValueError as exc:
            raise HandlerError(str(exc)) from None
        state = Outgoing(message.migration, vm, message.destination, PrecopySource(vm.page_count, config),
                         subjects.migration_pages(message.migration))
        self.outgoing[message.migration] = vm.id
        self._save_outgoing(state)
        task = asyncio.ensure_future(self._precopy(state))
        self._sending[message.migration] = task
        try:
            result = await task
        except asyncio.CancelledError:
            if task.cancelled() and not asyncio.current_task().cancelling():
                raise HandlerError(f"migration {message.migration} was aborted") from None
            raise
        except (PageTransferFailed, CommandFailed, CommandTimeout) as exc:
            self._resume(message.migration, f"send failed: {exc}")
            raise HandlerError(str(exc)) from None
        finally:
            self._sending.pop(message.migration, None)
        self._leases[message.migration] = self.spawn(self._lease(state), f"lease {message.migration}")
        return result

    async def _precopy(self, state: Outgoing) -> dict[str, Any]:
        vm, engine = state.vm, state.engine
        vm.guest.start_dirty_log()
        state.checksums = PageChecksums(vm.id, vm.page_count)
        state.ack_inbox = self.nc.new_inbox()

        async def on_ack(msg: Any) -> None:
            await self._on_ack(state, msg)

        acks = await self.nc.subscribe(f"{state.ack_inbox}.*", cb=on_ack)
        started = state.started_at = time.monotonic()
        try:
            step = engine.start(setup_time_s=0.0)
            while isinstance(step, SendPass):
                vm.cpu_throttle_pct = step.cpu_throttle_pct
                report = await self._send_pass(state, step.guest_pages)
                await self.run_guest(vm)
                step = engine.pass_done(report, vm.guest.sync_dirty())
                await self._publish_progress(state, 0, 0)
            # Stop-and-copy: pages the guest dirtied since the last sync join the remainder.
            await self.run_guest(vm)
            vm.paused = True
            paused_at = time.time()
            final = sorted(set(step.guest_pages) | set(vm.guest.sync_dirty()))
            report = await self._send_pass(state, final)
            # Every page was sent in the first pass and every page written since in a later
            # one, so the table holds the checksum of each page as the destination holds it.
            poisoned = sorted(state.checksums.error_pages)
            digest = state.checksums.digest(poisoned)
            done = engine.stop_copy_done(report)
        except BaseException as exc:
            if engine.status in ("setup", "active", "device"):
                engine.fail(str(exc) or type(exc).__name__)
            raise
        finally:
            vm.guest.stop_dirty_log()
            await _unsubscribe(acks)
        self.log.info("migration.sent", migration=state.migration, vm=vm.id, reason=step.reason,
                      seconds=round(time.monotonic() - started, 3), batches=state.flow.sent)
        return {
            "source_digest": digest, "poisoned_pages": poisoned, "batches": state.flow.sent,
            "sent_poisoned_pages": sorted(engine.poisoned_pages), "paused_at": paused_at,
            "stop_reason": step.reason, "stats": done.stats.to_query_migrate(),
        }

    async def _send_pass(self, state: Outgoing, guest_pages) -> PassReport:
        """Send one pass's pages within the credit window; return its measurements once all are acknowledged."""
        started = state.pass_started_at = time.monotonic()
        normal = zero = sent_bytes = pages_done = 0
        errors: list[int] = []
        state.bytes_before_pass = state.engine.stats().transferred_bytes
        batches = encode_pages(state.vm.guest, guest_pages, checksums=state.checksums)
        batch = next(batches, None)
        while batch is not None:
            # Encode one batch ahead, to know which batch ends the pass.
            following = next(batches, None)
            normal += batch.normal_pages
            zero += batch.zero_pages
            errors.extend(batch.error_pages)
            for page in batch.discovered_error_pages:
                await self._report_discovered(state, page)
            await self._wait_for_acks(state, state.flow.window - 1)
            seq, ack = state.flow.next_batch(last_of_pass=following is None)
            # A reply subject of its own per acknowledgement: a broker with least-privilege
            # permissions lets the destination respond once to each received reply subject.
            await self.nc.publish(state.subject, self.envelope(proto.MigratePages(state.migration, batch.payload, seq, ack)),
                                  reply=f"{state.ack_inbox}.{seq}" if ack else "")
            sent_bytes += len(batch.payload)
            pages_done += batch.normal_pages + batch.zero_pages + len(batch.error_pages)
            if time.monotonic() - state.progress_at >= PROGRESS_INTERVAL_S:
                await self._publish_progress(state, sent_bytes, len(guest_pages) - pages_done, len(errors))
            batch = following
        await self._wait_for_acks(state, 0)
        return PassReport(sent_bytes, time.monotonic() - started, normal, zero, tuple(errors))

    async def _wait_for_acks(self, state: Outgoing, in_flight: int) -> None:
        """Wait until at most `in_flight` batches are unacknowledged; raise PageTransferFailed on an error or silence."""
        while state.error is None and state.flow.in_flight > in_flight:
            state.acked.clear()
            try:
                await asyncio.wait_for(state.acked.wait(), BATCH_TIMEOUT_S)
            except asyncio.TimeoutError:
                state.error = PageTransferFailed(
                    state.destination, f"no acknowledgement of batches {state.flow.acked + 1}..{state.flow.sent} "
                    f"within {BATCH_TIMEOUT_S:g} s")
        if state.error is not None:
            raise state.error

    async def _on_ack(self, state: Outgoing, msg: Any) -> None:
        error = _ack_error(state, msg)
        if error is not None and state.error is None:
            state.error = PageTransferFailed(state.destination, error)
        state.acked.set()

    async def _report_discovered(self, state: Outgoing, guest_page: int) -> None:
        frame = state.vm.guest.host_frame(guest_page)
        self.log.warning("host.memory_error", frame=frame, vm=state.vm.id, guest_page=guest_page,
                         origin="discovered", migration=state.migration)
        await self.publish(proto.HostMemoryError(host=self.id, frame=frame, latent=True, vm=state.vm.id,
                                                 guest_page=guest_page, origin="discovered"))

    async def _publish_progress(self, state: Outgoing, pass_bytes: int, pass_remaining_pages: int,
                                pass_errors: int = 0) -> None:
        """Publish the engine's figures; within a pass, bring them up to the batches sent so far."""
        stats = state.engine.stats().to_query_migrate()
        ram = stats["ram"]
        now = time.monotonic()
        if pass_bytes:
            ram["transferred"] = state.bytes_before_pass + pass_bytes
            ram["remaining"] = pass_remaining_pages * PAGE_SIZE_BYTES
            ram["poisoned-pages"] += pass_errors
            ram["mbps"] = pass_bytes * 8 / max(now - state.pass_started_at, 1e-6) / 1e6
            stats["total-time"] = round((now - state.started_at) * 1000)
        state.progress_at = now
        await self.publish(proto.MigrationProgress(stats=stats, **state.ids(self.id)))

    # ---- after the copy: the coordinator finishes or aborts ----------------

    async def on_migrate_finish(self, message: proto.MigrateFinish, _msg: Any) -> dict[str, Any]:
        vm_id = self.outgoing.pop(message.migration, None)
        if vm_id is None:
            raise HandlerError(f"no outgoing migration {message.migration!r}; the VM may have resumed here")
        self._end_lease(message.migration)
        self.vms.pop(vm_id, None)
        self.ram.release(vm_id)
        self.store.drop_vm(vm_id)
        self.log.info("migration.departed", migration=message.migration, vm=vm_id)
        await self._release_stage2(vm_id, "migrated away")
        return {}

    def _abort_outgoing(self, migration: str) -> None:
        task = self._sending.get(migration)
        if task is not None:
            task.cancel()
        if migration in self.outgoing:
            self._resume(migration, "aborted by the coordinator")

    def _resume(self, migration: str, reason: str) -> None:
        """Run the VM here again and forget the migration."""
        self._end_lease(migration)
        vm_id = self.outgoing.pop(migration, None)
        vm = self.vms.get(vm_id) if vm_id else None
        if vm is None:
            return
        vm.paused = False
        vm.cpu_throttle_pct = 0
        self.store.save_vm(vm, memory=False)
        self.log.info("migration.resumed_at_source", migration=migration, vm=vm.id, reason=reason)

    def _end_lease(self, migration: str) -> None:
        lease = self._leases.pop(migration, None)
        if lease is not None and lease is not asyncio.current_task():
            lease.cancel()
        _outgoing_path(self.store, migration).unlink(missing_ok=True)

    async def _lease(self, state: Outgoing) -> None:
        """Resume the VM if the coordinator sends neither finish nor abort in time.

        The destination is aborted first, and until it confirms that it holds no
        copy the VM stays paused here, so it never runs on both hosts.
        """
        await asyncio.sleep(SOURCE_RESUME_TIMEOUT_S)
        while state.migration in self.outgoing:
            try:
                await self.request(subjects.host_command(state.destination, "migrate_abort"),
                                   proto.MigrateAbort(state.migration), 5.0)
                break
            except (CommandFailed, CommandTimeout) as exc:
                self.log.warning("migration.abort_failed", migration=state.migration, host=state.destination,
                                 error=str(exc))
                await asyncio.sleep(ABORT_RETRY_S)
        if state.migration not in self.outgoing:
            return
        reason = f"source {self.id} got no commit outcome within {SOURCE_RESUME_TIMEOUT_S:g} s; VM resumed on source"
        self._resume(state.migration, reason)
        # Only the coordinator publishes a migration's outcome (it may have published
        # migration.failed already, or will when it recovers), so this is no terminal event.
        await self.publish(proto.VmResumed(vm=state.vm.id, host=self.id, migration=state.migration, reason=reason))

    # ---- a restarted agent resumes the lease of a migration it was sending ----

    def _save_outgoing(self, state: Outgoing) -> None:
        self.store.save_vm(state.vm, state.migration, memory=False)
        path = _outgoing_path(self.store, state.migration)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"vm": state.vm.id, "destination": state.destination}))

    def _restart_leases(self) -> None:
        """Start a lease for each migration the previous process was sending; its VM is paused."""
        for migration, vm_id in list(self.outgoing.items()):
            try:
                saved = json.loads(_outgoing_path(self.store, migration).read_text())
                destination = saved["destination"]
            except (OSError, ValueError, KeyError):
                self._resume(migration, "no destination recorded for the migration")
                continue
            state = Outgoing(migration, self.vms[vm_id], destination, PrecopySource(self.vms[vm_id].page_count),
                             subjects.migration_pages(migration))
            self._leases[migration] = self.spawn(self._lease(state), f"lease {migration}")


def _ack_error(state: Outgoing, msg: Any) -> str | None:
    """Record an acknowledgement in the credit window, or return why it is an error."""
    if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
        # The broker replies for the destination because nothing reads the data subject any more.
        return (f"{state.destination} no longer receives page batches (its agent stopped, its host "
                "powered off, or it dropped the migration)")
    try:
        reply = proto.parse(proto.decode(msg.data), proto.Reply)
    except proto.MessageRejected as exc:
        return f"invalid acknowledgement: {exc}"
    if not reply.ok:
        return reply.error
    try:
        state.flow.on_ack(reply.result.get("seq"))
    except AckOutOfRange as exc:
        return f"invalid acknowledgement: {exc}"
    return None


async def _unsubscribe(subscription: Any) -> None:
    try:
        await subscription.unsubscribe()
    except nats.errors.Error:
        # The connection is closing or gone, and the subscription with it.
        pass


def _outgoing_path(store: Any, migration: str) -> Path:
    # A subdirectory, because the store reads every *.json in its root as a VM.
    return store.root / "outgoing" / f"{migration}.json"
