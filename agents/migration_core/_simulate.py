"""Drive a whole migration between two GuestMemory objects in simulated time.

A network of fixed bandwidth carries the batches, and the guest workload
runs for the simulated time each batch takes, so pages dirtied during a
pass are resent in the next one. Nothing sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._guest import GuestMemory
from ._precopy import Completed, PassReport, PrecopyConfig, PrecopyDestination, PrecopySource, SendPass, StopAndCopy
from ._stats import MigrationStats
from ._transfer import DEFAULT_RECORDS_PER_BATCH, encode_pages
from ._workload import GuestWorkload


@dataclass(frozen=True)
class SimulatedMigration:
    stats: MigrationStats
    stop_reason: str
    # Guest pages the source sent as error records, and those the destination poisoned.
    source_poisoned_pages: frozenset[int]
    destination_poisoned_pages: frozenset[int]
    discovered_error_pages: frozenset[int]
    passes: int


def simulate_migration(
    source: GuestMemory,
    destination: GuestMemory,
    *,
    bandwidth_bytes_per_s: float,
    workload: GuestWorkload | None = None,
    cpu_demand: float = 1.0,
    config: PrecopyConfig | None = None,
    records_per_batch: int = DEFAULT_RECORDS_PER_BATCH,
) -> SimulatedMigration:
    """Migrate `source` into `destination` through PrecopySource and PrecopyDestination."""
    if not bandwidth_bytes_per_s > 0:
        raise ValueError(f"invalid bandwidth_bytes_per_s {bandwidth_bytes_per_s!r}: expected a positive number")
    if destination.page_count != source.page_count:
        raise ValueError(
            f"destination has {destination.page_count} pages, source VM {source.vm_id!r} has {source.page_count}"
        )
    engine = PrecopySource(source.page_count, config)
    receiver = PrecopyDestination(destination)
    discovered: set[int] = set()
    source.start_dirty_log()
    step: SendPass | StopAndCopy = engine.start()
    passes = 0
    try:
        while isinstance(step, SendPass):
            report = _run_pass(source, receiver, step.guest_pages, bandwidth_bytes_per_s,
                               records_per_batch, discovered, workload, cpu_demand, step.cpu_throttle_pct)
            passes += 1
            step = engine.pass_done(report, source.sync_dirty())
        # The guest is paused from here on, so no workload runs.
        report = _run_pass(source, receiver, step.guest_pages, bandwidth_bytes_per_s,
                           records_per_batch, discovered, None, 0.0, 0)
        passes += 1
        done: Completed = engine.stop_copy_done(report)
    finally:
        source.stop_dirty_log()
    return SimulatedMigration(
        stats=done.stats,
        stop_reason=step.reason,
        source_poisoned_pages=engine.poisoned_pages,
        destination_poisoned_pages=receiver.complete(),
        discovered_error_pages=frozenset(discovered),
        passes=passes,
    )


def _run_pass(
    source: GuestMemory,
    receiver: PrecopyDestination,
    guest_pages,
    bandwidth_bytes_per_s: float,
    records_per_batch: int,
    discovered: set[int],
    workload: GuestWorkload | None,
    cpu_demand: float,
    cpu_throttle_pct: int,
) -> PassReport:
    sent = normal = zero = 0
    errors: list[int] = []
    for batch in encode_pages(source, guest_pages, records_per_batch=records_per_batch):
        receiver.apply(batch.payload)
        size = len(batch.payload)
        sent += size
        normal += batch.normal_pages
        zero += batch.zero_pages
        errors.extend(batch.error_pages)
        discovered.update(batch.discovered_error_pages)
        if workload is not None:
            workload.run(size / bandwidth_bytes_per_s, cpu_demand, cpu_throttle_pct)
    return PassReport(sent, sent / bandwidth_bytes_per_s, normal, zero, tuple(errors))
