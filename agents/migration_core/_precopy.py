"""The precopy state machine, source and destination sides.

Neither side has a clock or does I/O. The driver sends what a step names,
measures bytes and seconds, and feeds them back to get the next step.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ._guest import GuestMemory
from ._memory import PAGE_SIZE_BYTES
from ._stats import MigrationStats
from ._transfer import AppliedBatch, PageChecksums, apply_batch
from ._wire import DATA_RECORD_SIZE_BYTES


@dataclass(frozen=True)
class PrecopyConfig:
    """Tuning of one migration. Auto-converge defaults are QEMU's (migration/options.c)."""

    downtime_limit_s: float = 0.3
    # Passes over dirty pages after the first full pass; then stop-and-copy whatever remains.
    max_iterations: int = 30
    auto_converge: bool = False
    throttle_trigger_threshold_pct: int = 50
    cpu_throttle_initial_pct: int = 20
    cpu_throttle_increment_pct: int = 10
    max_cpu_throttle_pct: int = 99

    def __post_init__(self) -> None:
        if not (isinstance(self.downtime_limit_s, (int, float)) and 0 < self.downtime_limit_s < math.inf):
            raise ValueError(f"invalid downtime_limit_s {self.downtime_limit_s!r}: expected a positive number")
        if type(self.max_iterations) is not int or self.max_iterations < 0:
            raise ValueError(f"invalid max_iterations {self.max_iterations!r}: expected a non-negative int")
        for name in ("throttle_trigger_threshold_pct", "cpu_throttle_initial_pct",
                     "cpu_throttle_increment_pct", "max_cpu_throttle_pct"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 99:
                raise ValueError(f"invalid {name} {value!r}: expected an int in 1..99")


@dataclass(frozen=True)
class SendPass:
    """Send these pages while the guest runs, throttled to `cpu_throttle_pct`."""

    iteration: int
    guest_pages: Sequence[int]
    cpu_throttle_pct: int


@dataclass(frozen=True)
class StopAndCopy:
    """Pause the guest, then send these pages and the device state.

    `reason` is "converged" when the pages fit the downtime limit at the
    measured bandwidth, or "iteration-cap" when the pass cap forced it.
    """

    iteration: int
    guest_pages: Sequence[int]
    reason: str
    expected_downtime_s: float | None


@dataclass(frozen=True)
class Completed:
    """End of the source's work: every page is sent.

    The VM must keep running on the source until the destination confirms
    that it has the full state.
    """

    stats: MigrationStats


@dataclass(frozen=True)
class PassReport:
    """Measurements of one pass on the source."""

    bytes_sent: int
    elapsed_s: float
    normal_pages: int = 0
    zero_pages: int = 0
    error_pages: Collection[int] = ()

    def __post_init__(self) -> None:
        if type(self.bytes_sent) is not int or self.bytes_sent < 0:
            raise ValueError(f"invalid bytes_sent {self.bytes_sent!r}: expected a non-negative int")
        if not (isinstance(self.elapsed_s, (int, float)) and 0 <= self.elapsed_s < math.inf):
            raise ValueError(f"invalid elapsed_s {self.elapsed_s!r}: expected a non-negative number")
        for name in ("normal_pages", "zero_pages"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"invalid {name} {value!r}: expected a non-negative int")


class WrongMigrationState(RuntimeError):
    """A call that the migration's current state does not allow; a driver bug."""

    def __init__(self, call: str, status: str) -> None:
        self.call = call
        self.status = status
        super().__init__(f"{call}() is invalid while the migration is {status!r}")


@dataclass
class _Totals:
    setup_time_s: float = 0.0
    elapsed_s: float = 0.0
    transferred_bytes: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    normal_pages: int = 0
    zero_pages: int = 0
    poisoned: set[int] = field(default_factory=set)
    dirty_sync_count: int = 0
    bandwidth_bytes_per_s: float = 0.0
    pages_per_second: float = 0.0
    dirty_pages_rate_pages_per_s: float = 0.0
    remaining_pages: int = 0
    pages_sent: int = 0
    expected_downtime_s: float | None = None
    downtime_s: float | None = None

    def add_pass(self, report: PassReport) -> float:
        """Add a pass and return its bandwidth, infinite for a pass that took no measurable time."""
        self.elapsed_s += report.elapsed_s
        self.transferred_bytes += report.bytes_sent
        self.normal_pages += report.normal_pages
        self.zero_pages += report.zero_pages
        self.poisoned.update(report.error_pages)
        pages = report.normal_pages + report.zero_pages + len(report.error_pages)
        self.pages_sent += pages
        if report.elapsed_s == 0:
            return math.inf
        bandwidth = report.bytes_sent / report.elapsed_s
        # An empty pass measures nothing, so the stats keep the last real measurement.
        if report.bytes_sent:
            self.bandwidth_bytes_per_s = bandwidth
            self.pages_per_second = pages / report.elapsed_s
        return bandwidth

    def finish_rates(self) -> None:
        """Replace the last pass's rates by whole-migration averages, as QEMU does on completion."""
        if self.elapsed_s > 0:
            self.bandwidth_bytes_per_s = self.transferred_bytes / self.elapsed_s
            self.pages_per_second = self.pages_sent / self.elapsed_s


class PrecopySource:
    """Source side: a full pass, passes over dirty pages, then stop-and-copy.

    Call start(), then pass_done() after each SendPass until it returns
    StopAndCopy, then stop_copy_done(). fail() and cancel() end it at any
    point before completion.
    """

    def __init__(self, page_count: int, config: PrecopyConfig | None = None) -> None:
        if type(page_count) is not int or page_count <= 0:
            raise ValueError(f"invalid page_count {page_count!r}: expected a positive int")
        self.page_count = page_count
        self.config = config or PrecopyConfig()
        self.status = "setup"
        self.iteration = 0
        self.cpu_throttle_pct = 0
        self._totals = _Totals()
        self._dirty_rate_high_count = 0
        self._failure_reason: str | None = None

    def start(self, setup_time_s: float = 0.0) -> SendPass:
        """Begin the first pass over every page. Dirty logging must be on before it is sent."""
        self._require("start", "setup")
        if not (isinstance(setup_time_s, (int, float)) and 0 <= setup_time_s < math.inf):
            raise ValueError(f"invalid setup_time_s {setup_time_s!r}: expected a non-negative number")
        self._totals.setup_time_s = setup_time_s
        self.status = "active"
        self._totals.remaining_pages = self.page_count
        return SendPass(0, range(self.page_count), self.cpu_throttle_pct)

    def pass_done(self, report: PassReport, dirty_pages: Sequence[int]) -> SendPass | StopAndCopy:
        """Record a finished pass and the pages dirtied during it; return the next step."""
        self._require("pass_done", "active")
        totals = self._totals
        bandwidth = totals.add_pass(report)
        totals.precopy_bytes += report.bytes_sent
        totals.dirty_sync_count += 1
        totals.remaining_pages = len(dirty_pages)
        if report.elapsed_s > 0:
            totals.dirty_pages_rate_pages_per_s = len(dirty_pages) / report.elapsed_s
        # Bandwidth counts the bytes on the wire, so the remainder does too: a page as a
        # DATA record, its header included (zero and error records are smaller).
        remaining_bytes = len(dirty_pages) * DATA_RECORD_SIZE_BYTES
        if remaining_bytes == 0:
            expected: float | None = 0.0
        elif bandwidth > 0:
            expected = remaining_bytes / bandwidth
        else:
            expected = None
        totals.expected_downtime_s = expected
        if expected is not None and expected <= self.config.downtime_limit_s:
            return self._stop_and_copy(dirty_pages, "converged")
        if self.iteration >= self.config.max_iterations:
            return self._stop_and_copy(dirty_pages, "iteration-cap")
        if self.config.auto_converge:
            self._maybe_throttle(remaining_bytes, report.bytes_sent)
        self.iteration += 1
        return SendPass(self.iteration, dirty_pages, self.cpu_throttle_pct)

    def stop_copy_done(self, report: PassReport, resume_s: float = 0.0) -> Completed:
        """Record the stop-and-copy pass; downtime is its time plus the destination's resume time."""
        self._require("stop_copy_done", "device")
        if not (isinstance(resume_s, (int, float)) and 0 <= resume_s < math.inf):
            raise ValueError(f"invalid resume_s {resume_s!r}: expected a non-negative number")
        totals = self._totals
        totals.add_pass(report)
        totals.downtime_bytes = report.bytes_sent
        totals.elapsed_s += resume_s
        totals.downtime_s = report.elapsed_s + resume_s
        totals.remaining_pages = 0
        totals.finish_rates()
        self.status = "completed"
        return Completed(self.stats())

    def fail(self, reason: str) -> MigrationStats:
        """End the migration as failed; the VM keeps running on the source."""
        self._require("fail", "setup", "active", "device")
        self.status = "failed"
        self._failure_reason = reason
        return self.stats()

    def cancel(self) -> MigrationStats:
        self._require("cancel", "setup", "active", "device")
        self.status = "cancelled"
        return self.stats()

    @property
    def poisoned_pages(self) -> frozenset[int]:
        """Guest pages sent as error records so far."""
        return frozenset(self._totals.poisoned)

    def stats(self) -> MigrationStats:
        totals = self._totals
        return MigrationStats(
            status=self.status,
            total_time_s=totals.setup_time_s + totals.elapsed_s,
            setup_time_s=totals.setup_time_s,
            downtime_s=totals.downtime_s,
            expected_downtime_s=totals.expected_downtime_s,
            transferred_bytes=totals.transferred_bytes,
            remaining_bytes=totals.remaining_pages * PAGE_SIZE_BYTES,
            total_bytes=self.page_count * PAGE_SIZE_BYTES,
            duplicate_pages=totals.zero_pages,
            normal_pages=totals.normal_pages,
            normal_bytes=totals.normal_pages * PAGE_SIZE_BYTES,
            dirty_pages_rate_pages_per_s=totals.dirty_pages_rate_pages_per_s,
            bandwidth_bytes_per_s=totals.bandwidth_bytes_per_s,
            pages_per_second=totals.pages_per_second,
            dirty_sync_count=totals.dirty_sync_count,
            precopy_bytes=totals.precopy_bytes,
            downtime_bytes=totals.downtime_bytes,
            poisoned_pages=len(totals.poisoned),
            iterations=self.iteration,
            cpu_throttle_pct=self.cpu_throttle_pct,
            failure_reason=self._failure_reason,
        )

    def _stop_and_copy(self, dirty_pages: Sequence[int], reason: str) -> StopAndCopy:
        self.status = "device"
        return StopAndCopy(self.iteration + 1, dirty_pages, reason, self._totals.expected_downtime_s)

    def _maybe_throttle(self, dirty_bytes: int, sent_bytes: int) -> None:
        # QEMU's rule: throttle after two syncs in a row in which the guest
        # dirtied more than the threshold share of what the pass sent.
        threshold = sent_bytes * self.config.throttle_trigger_threshold_pct / 100
        if dirty_bytes <= threshold:
            return
        self._dirty_rate_high_count += 1
        if self._dirty_rate_high_count < 2:
            return
        self._dirty_rate_high_count = 0
        if self.cpu_throttle_pct == 0:
            self.cpu_throttle_pct = self.config.cpu_throttle_initial_pct
        else:
            self.cpu_throttle_pct = min(
                self.cpu_throttle_pct + self.config.cpu_throttle_increment_pct,
                self.config.max_cpu_throttle_pct,
            )

    def _require(self, call: str, *statuses: str) -> None:
        if self.status not in statuses:
            raise WrongMigrationState(call, self.status)


class PrecopyDestination:
    """Destination side: applies page batches to the incoming VM's memory.

    A malformed batch or a page beyond the VM's memory raises before
    anything is stored, so the migration can be dropped cleanly.
    """

    def __init__(self, memory: GuestMemory, checksums: PageChecksums | None = None) -> None:
        self.memory = memory
        # Filled with each stored page's checksum, when given.
        self.checksums = checksums
        self.status = "active"
        self.normal_pages = 0
        self.zero_pages = 0
        self.batches = 0
        self._poisoned: set[int] = set()

    def apply(self, payload: bytes | bytearray | memoryview) -> AppliedBatch:
        self._require_active("apply")
        applied = apply_batch(self.memory, payload, self.checksums)
        self.batches += 1
        self.normal_pages += applied.normal_pages
        self.zero_pages += applied.zero_pages
        self._poisoned.update(applied.error_pages)
        return applied

    def complete(self) -> frozenset[int]:
        """Mark the state complete and return the guest pages received as error records."""
        self._require_active("complete")
        self.status = "completed"
        return self.poisoned_pages

    @property
    def poisoned_pages(self) -> frozenset[int]:
        return frozenset(self._poisoned)

    def _require_active(self, call: str) -> None:
        if self.status != "active":
            raise WrongMigrationState(call, self.status)
