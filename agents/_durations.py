"""Checks of the durations that faults take, shared by `dcfleet inject`, `agents.chaos.Cluster` and scenarios.

Only finite numbers pass: an infinite fault never ends, and events carrying
Infinity or NaN are not valid JSON for `dcfleet events --json` readers.
"""

from __future__ import annotations

import math
from typing import Any

# Maximum fault duration: one hour. A longer one is most likely a typo, and it would
# outlast the run that injected it.
MAX_FAULT_S = 3600.0
# Maximum response delay of a BMC in mode slow (the BMC agent rejects more).
MAX_DELAY_S = 300.0


def check_seconds(value: Any, name: str, maximum: float = MAX_FAULT_S) -> float:
    """Return value as float when it is a finite number of seconds in (0, maximum]; raise ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value}")
    if not 0 < value <= maximum:
        raise ValueError(f"{name} must be greater than 0 and at most {maximum:g} s, got {value:g}")
    return float(value)
