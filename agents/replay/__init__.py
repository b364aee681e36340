"""Trace replay: the power policy on a virtual clock, without the bus."""

from ._engine import ReplayOptions, ReplayResult, run_replay
from ._model import MEMORY_SEMANTICS, POLICIES, PRESETS, Preset

__all__ = ["MEMORY_SEMANTICS", "POLICIES", "PRESETS", "Preset", "ReplayOptions", "ReplayResult", "run_replay"]
