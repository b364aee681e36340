"""History checker: reads a stored event history and names the events that break an invariant."""

from ._commands import COMMAND_KINDS, CommandKind
from ._history import read_jsonl, read_stream
from ._invariants import check, check_events, memory_problem
from ._model import Event, HistoryError, Report, Unfinished, Violation
from ._report import print_report, report_dict

__all__ = [
    "COMMAND_KINDS",
    "CommandKind",
    "Event",
    "HistoryError",
    "Report",
    "Unfinished",
    "Violation",
    "check",
    "check_events",
    "memory_problem",
    "print_report",
    "read_jsonl",
    "read_stream",
    "report_dict",
]
