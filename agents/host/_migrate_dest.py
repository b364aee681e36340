"""Destination side of a live migration in the host agent: prepare, page batches, commit.

The incoming VM does not run until commit, and commit succeeds only when every batch
the source sent has been applied and the memory digest over the pages the source did
not report poisoned equals the source's. Each side keeps a table of page checksums
as it sends or applies pages, so the digest at commit hashes that table instead of
reading the VM's memory while the VM is stopped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import proto
from proto import subjects

from .._agent import HandlerError
from ..migration_core import (
    GuestPageOutOfRange,
    MalformedPageBatch,
    OutOfHostFrames,
    PageChecksums,
    PrecopyDestination,
)
from ._memory import GuestVm


@dataclass
class Incoming:
    """A VM arriving by migration, not yet running here."""

    migration: str
    vm: str
    spec: dict[str, Any]
    guest_vm: GuestVm
    receiver: PrecopyDestination
    subscription: Any
    batches: int = 0
    # Set by the first batch that did not apply; commit then fails with it.
    rejected: str | None = None

    @property
    def memory_bytes(self) -> int:
        return self.guest_vm.memory_bytes


class MigrationDestinationMixin:
    """Destination handlers of a host agent; needs `ram`, `vms`, `incoming` and the store."""

    async def on_migrate_prepare(self, message: proto.MigratePrepare, _msg: Any) -> dict[str, Any]:
        self._require_running()
        spec = message.spec
        try:
            self._check_vm_spec(message.vm, spec["trace"], spec["mips"], spec["memory_bytes"])
        except KeyError as exc:
            raise HandlerError(f"VM spec lacks {exc}") from None
        if message.vm in self.vms:
            raise HandlerError(f"VM {message.vm} already runs on {self.id}")
        if message.migration in self.incoming or not subjects.is_token(message.migration):
            raise HandlerError(f"invalid or duplicate migration id {message.migration!r}")
        self._require_room(spec["memory_bytes"])
        guest_vm = self._incoming_guest(message.vm, spec)
        receiver = PrecopyDestination(guest_vm.guest, PageChecksums(message.vm, guest_vm.page_count))
        incoming = Incoming(message.migration, message.vm, dict(spec), guest_vm, receiver, None)

        async def on_batch(msg: Any) -> None:
            await self._on_batch(incoming, msg)

        incoming.subscription = await self.nc.subscribe(
            subjects.migration_pages(message.migration), cb=on_batch, pending_bytes_limit=256 * 1024 * 1024)
        try:
            self._map_stage2(message.vm, spec["memory_bytes"])
        except HandlerError:
            await incoming.subscription.unsubscribe()
            self.ram.release(message.vm)
            raise
        self.incoming[message.migration] = incoming
        await self._publish_stage2_mapped(message.vm)
        return {}

    def _incoming_guest(self, vm_id: str, spec: dict[str, Any]) -> GuestVm:
        rate = spec.get("max_dirty_rate_pages_per_s", 2000.0)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate < 0:
            raise HandlerError(f"invalid max_dirty_rate_pages_per_s {rate!r}: expected a number >= 0")
        try:
            return self.ram.create_vm(vm_id, spec["trace"], float(spec["mips"]), spec["memory_bytes"],
                                      int(spec["seed"]), float(rate), fill=False)
        except OutOfHostFrames as exc:
            raise HandlerError(f"host {self.id} cannot hold VM {vm_id}: {exc}") from None

    async def _on_batch(self, incoming: Incoming, msg: Any) -> None:
        if incoming.rejected is not None:
            # The migration failed here already; the event went out with the first rejection.
            self.log.debug("migration.batch_dropped", migration=incoming.migration, error=incoming.rejected)
            await self._reply(msg, proto.Reply(ok=False, error=f"rejected: {incoming.rejected}"))
            return
        try:
            pages = proto.parse(proto.decode(msg.data), proto.MigratePages)
            if pages.migration != incoming.migration:
                raise proto.MessageRejected("wrong-migration", f"batch of {pages.migration!r} on the subject of "
                                            f"{incoming.migration!r}")
            if self.incoming.get(incoming.migration) is not incoming:
                raise proto.MessageRejected("unknown-migration", f"no incoming migration {incoming.migration!r}")
            if pages.seq != incoming.batches + 1:
                raise proto.MessageRejected("missing-batch", f"batch {pages.seq} arrived after batch "
                                            f"{incoming.batches}: batches were lost or reordered")
            incoming.receiver.apply(pages.batch)
        except (MalformedPageBatch, GuestPageOutOfRange) as exc:
            incoming.rejected = str(exc)
            await self.reject(msg, proto.MessageRejected("malformed-page-batch", str(exc)))
            return
        except proto.MessageRejected as exc:
            incoming.rejected = str(exc)
            await self.reject(msg, exc)
            return
        incoming.batches += 1
        if pages.ack and msg.reply:
            # Batches arrive in order, so this acknowledges every batch up to pages.seq.
            await msg.respond(self.envelope(proto.Reply(ok=True, result={"seq": pages.seq})))

    async def on_migrate_commit(self, message: proto.MigrateCommit, _msg: Any) -> dict[str, Any]:
        """Start the VM here once it holds the source's full state; the source keeps its copy until then."""
        incoming = self.incoming.get(message.migration)
        if incoming is None:
            raise HandlerError(f"no incoming migration {message.migration!r}")
        if incoming.rejected is not None:
            raise HandlerError(f"a page batch was rejected: {incoming.rejected}")
        if incoming.batches != message.batches:
            raise HandlerError(f"received {incoming.batches} of the {message.batches} page batches sent")
        excluded = message.poisoned_pages
        if not isinstance(excluded, list) or not all(type(p) is int for p in excluded):
            raise HandlerError("poisoned_pages must be a list of guest page numbers")
        digest = incoming.receiver.checksums.digest(excluded)
        if digest != message.source_digest:
            raise HandlerError(f"memory digest {digest} differs from the source's {message.source_digest}")
        # The check passed: run the VM first, then tidy up, so the rest is not downtime.
        del self.incoming[message.migration]
        vm = incoming.guest_vm
        self.vms[vm.id] = vm
        resumed_at = time.time()
        poisoned = sorted(incoming.receiver.complete())
        await incoming.subscription.unsubscribe()
        self.store.record_arrival(message.migration, vm.id, digest)
        # The memory image goes to disk after the VM runs, so the write is not downtime.
        self.spawn(asyncio.to_thread(self.store.save_vm, vm), f"save {vm.id}")
        self.log.info("migration.arrived", migration=message.migration, vm=vm.id, poisoned_pages=len(poisoned))
        return {"destination_digest": digest, "poisoned_pages": poisoned, "resumed_at": resumed_at}

    async def _drop_incoming(self, incoming: Incoming) -> None:
        self.incoming.pop(incoming.migration, None)
        self.ram.release(incoming.vm)
        try:
            await incoming.subscription.unsubscribe()
        except Exception as exc:  # already gone with the connection
            self.log.debug("unsubscribe.failed", error=str(exc))
