"""Print a checker Report for people or as JSON."""

from __future__ import annotations

import json
from typing import TextIO

from ._model import Report

SHOWN_COUNTS = ("vm.placed", "migration.completed", "migration.failed", "host.power_off", "host.power_on",
                "fault.injected", "fault.cleared", "agent.crashed", "agent.restarted", "broker.restarted")


def print_report(report: Report, out: TextIO, as_json: bool = False) -> None:
    if as_json:
        out.write(json.dumps(report_dict(report), indent=2) + "\n")
        return
    counts = ", ".join(f"{report.counts.get(t, 0)} {t}" for t in SHOWN_COUNTS if report.counts.get(t))
    out.write(f"checked {report.events} events (sequences {report.first_seq}..{report.last_seq})")
    out.write(f": {counts}\n" if counts else "\n")
    for violation in report.violations:
        cited = ", ".join(f"{e.type} id={e.id} seq={e.seq}" for e in violation.events)
        out.write(f"VIOLATION [{violation.invariant}] {violation.message}\n    events: {cited}\n")
    for item in report.unfinished:
        out.write(f"unfinished at stop: {item.command} {item.key} "
                  f"({item.event.type} id={item.event.id} seq={item.event.seq}); the history ends before its "
                  "outcome and its owner never restarted, so it is not counted as lost\n")
    out.write(f"{len(report.violations)} violations, {len(report.unfinished)} commands unfinished at stop\n")


def report_dict(report: Report) -> dict:
    return {
        "events": report.events,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "violations": [v.to_dict() for v in report.violations],
        "unfinished_at_stop": [
            {"command": u.command, "key": u.key, "id": u.event.id, "seq": u.event.seq} for u in report.unfinished
        ],
        "counts": report.counts,
    }
