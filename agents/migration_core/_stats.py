"""Migration statistics under the names QEMU's `query-migrate` uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# MigrationStatus values from QEMU's qapi/migration.json that this engine reaches.
STATUSES = ("setup", "active", "device", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class MigrationStats:
    """A snapshot of one migration. Times in seconds, sizes in bytes."""

    status: str
    total_time_s: float
    setup_time_s: float
    # None until stop-and-copy ends, as QEMU reports downtime only when completed.
    downtime_s: float | None
    expected_downtime_s: float | None
    transferred_bytes: int
    remaining_bytes: int
    total_bytes: int
    duplicate_pages: int
    normal_pages: int
    normal_bytes: int
    dirty_pages_rate_pages_per_s: float
    bandwidth_bytes_per_s: float
    pages_per_second: float
    dirty_sync_count: int
    precopy_bytes: int
    downtime_bytes: int
    poisoned_pages: int
    iterations: int
    cpu_throttle_pct: int
    failure_reason: str | None = None

    def to_query_migrate(self) -> dict[str, Any]:
        """Return the stats as QEMU's `query-migrate` reply shapes them.

        Times are integer milliseconds and `mbps` is megabits per second, as
        in QEMU. `poisoned-pages` (pages sent as error records) is dcfleet's
        own addition under `ram`.
        """
        reply: dict[str, Any] = {
            "status": self.status,
            "total-time": _ms(self.total_time_s),
            "setup-time": _ms(self.setup_time_s),
            "ram": {
                "transferred": self.transferred_bytes,
                "remaining": self.remaining_bytes,
                "total": self.total_bytes,
                "duplicate": self.duplicate_pages,
                "normal": self.normal_pages,
                "normal-bytes": self.normal_bytes,
                "dirty-pages-rate": round(self.dirty_pages_rate_pages_per_s),
                "mbps": self.bandwidth_bytes_per_s * 8 / 1e6,
                "pages-per-second": round(self.pages_per_second),
                "dirty-sync-count": self.dirty_sync_count,
                "precopy-bytes": self.precopy_bytes,
                "downtime-bytes": self.downtime_bytes,
                "poisoned-pages": self.poisoned_pages,
            },
        }
        if self.downtime_s is not None:
            reply["downtime"] = _ms(self.downtime_s)
        if self.expected_downtime_s is not None:
            reply["expected-downtime"] = _ms(self.expected_downtime_s)
        if self.cpu_throttle_pct:
            reply["cpu-throttle-percentage"] = self.cpu_throttle_pct
        if self.failure_reason is not None:
            reply["error-desc"] = self.failure_reason
        return reply


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
