"""The geometric model of precopy migration.

With memory V, dirty rate D and bandwidth R, round 0 sends V and round i
sends V*(D/R)^i, because round i-1 lasts V*(D/R)^(i-1)/R seconds and the
guest dirties D bytes per second meanwhile. Precopy stops when the
remainder fits the downtime limit at bandwidth R, or at the iteration cap,
and the remainder is sent with the guest paused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PrecopyPrediction:
    total_time_s: float
    downtime_s: float
    # Passes after the first full pass, matching PrecopySource.iteration.
    iterations: int
    transferred_bytes: float
    # "converged" or "iteration-cap", as in StopAndCopy.reason.
    reason: str


def predict_precopy(
    memory_bytes: float,
    dirty_rate_bytes_per_s: float,
    bandwidth_bytes_per_s: float,
    *,
    downtime_limit_s: float = 0.3,
    max_iterations: int = 30,
) -> PrecopyPrediction:
    """Predict total time and downtime; a round never sends more than the whole memory."""
    for name, value in (("memory_bytes", memory_bytes), ("dirty_rate_bytes_per_s", dirty_rate_bytes_per_s)):
        if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
            raise ValueError(f"invalid {name} {value!r}: expected a non-negative number")
    if not (isinstance(bandwidth_bytes_per_s, (int, float)) and 0 < bandwidth_bytes_per_s < math.inf):
        raise ValueError(f"invalid bandwidth_bytes_per_s {bandwidth_bytes_per_s!r}: expected a positive number")
    if type(max_iterations) is not int or max_iterations < 0:
        raise ValueError(f"invalid max_iterations {max_iterations!r}: expected a non-negative int")

    ratio = dirty_rate_bytes_per_s / bandwidth_bytes_per_s
    threshold_bytes = bandwidth_bytes_per_s * downtime_limit_s
    round_bytes = float(memory_bytes)
    total_time_s = 0.0
    transferred = 0.0
    iteration = 0
    while True:
        total_time_s += round_bytes / bandwidth_bytes_per_s
        transferred += round_bytes
        remainder = min(float(memory_bytes), round_bytes * ratio)
        if remainder <= threshold_bytes:
            reason = "converged"
            break
        if iteration >= max_iterations:
            reason = "iteration-cap"
            break
        iteration += 1
        round_bytes = remainder
    downtime_s = remainder / bandwidth_bytes_per_s
    return PrecopyPrediction(total_time_s + downtime_s, downtime_s, iteration, transferred + remainder, reason)
