"""Write a replay's summary.json and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._engine import ReplayResult

PLOTS = ("hosts_on.png", "cluster_power.png", "utilization.png", "migrations.png")


class ReportError(OSError):
    """The report directory cannot be written; the message names it."""


def write_report(result: ReplayResult, directory: Path) -> list[Path]:
    """Write summary.json and the plots into `directory` (created if missing); return the paths."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        summary_path = directory / "summary.json"
        document = dict(result.summary, recommendations_first=result.recommendations)
        summary_path.write_text(json.dumps(document, indent=2) + "\n")
        return [summary_path] + _plots(result, directory)
    except OSError as exc:
        raise ReportError(f"cannot write the report to {directory}: {exc.strerror or exc}") from None


def _plots(result: ReplayResult, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result.summary
    hours = np.arange(len(result.hosts_on)) * summary["interval_s"] / 3600.0
    title = f"{summary['policy']}, {summary['memory_semantics']} memory, {summary['hosts']} hosts, {summary['vms']} VMs"
    figures = [
        ("hosts_on.png", "hosts powered on", lambda ax: ax.step(hours, result.hosts_on, where="post")),
        ("cluster_power.png", "cluster power (W)", lambda ax: ax.plot(hours, result.cluster_watts)),
        ("migrations.png", "migrations per interval", lambda ax: ax.bar(hours, result.migrations,
                                                                         width=summary["interval_s"] / 3600.0)),
    ]
    paths = []
    for name, label, draw in figures:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        draw(ax)
        ax.set_xlabel("simulated time (h)")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        paths.append(_save(fig, directory / name, plt))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.hist(np.clip(result.host_utilization, 0, 1.5) * 100, bins=60)
    ax.set_xlabel("powered-on host CPU utilization per interval (%; demand over capacity, 150% and above in the last bin)")
    ax.set_ylabel("host-intervals")
    ax.set_title(title, fontsize=9)
    paths.append(_save(fig, directory / "utilization.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
