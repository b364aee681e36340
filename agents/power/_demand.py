"""Demand history per VM and its windowed estimate (pure: times are passed in)."""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np


class DemandHistory:
    """Demand samples (simulated time in s, MIPS) per VM, newest last."""

    def __init__(self, max_samples: int = 4096) -> None:
        self._samples: dict[str, deque[tuple[float, float]]] = defaultdict(lambda: deque(maxlen=max_samples))

    def add(self, vm: str, time_s: float, demand_mips: float) -> None:
        samples = self._samples[vm]
        if samples and time_s < samples[-1][0]:
            raise ValueError(f"sample for {vm} at {time_s} s is older than the last one at {samples[-1][0]} s")
        samples.append((time_s, demand_mips))

    def estimate(self, vm: str, now_s: float, window_s: float) -> float:
        """Mean demand over the samples taken in (now - window, now].

        With no sample in the window, the latest sample taken up to now; with none
        at all, 0.
        """
        samples = self._samples.get(vm)
        if not samples:
            return 0.0
        return window_mean([t for t, _ in samples], [d for _, d in samples], now_s, window_s)


def window_mean(times_s: list[float], demands_mips: list[float], now_s: float, window_s: float) -> float:
    """Mean of the demands whose times fall in (now - window, now]; see DemandHistory.estimate."""
    inside = [d for t, d in zip(times_s, demands_mips) if now_s - window_s < t <= now_s]
    if inside:
        return sum(inside) / len(inside)
    earlier = [d for t, d in zip(times_s, demands_mips) if t <= now_s]
    return earlier[-1] if earlier else 0.0


def window_means(demand_mips: np.ndarray, samples_known: int, window_samples: int) -> np.ndarray:
    """Per-VM mean of the last `window_samples` known columns of a VMs x samples matrix.

    The same estimate as `window_mean` for samples taken at a fixed interval, computed
    for every VM at once: replay uses it.
    """
    if samples_known <= 0:
        return np.zeros(demand_mips.shape[0])
    first = max(0, samples_known - window_samples)
    # Sum in sample order, as `window_mean` does, so both give the same floats.
    window = demand_mips[:, first:samples_known]
    total = window[:, 0].copy()
    for column in range(1, window.shape[1]):
        total += window[:, column]
    return total / window.shape[1]
