"""Statistics of a completed migration as the coordinator reports them."""

from agents.migration._run import completed_stats


def test_completed_rates_average_over_transfer_time():
    sent = {"paused_at": 100.0, "stats": {"status": "active", "ram": {
        "transferred": 25_000_000, "normal": 6000, "duplicate": 1000, "poisoned-pages": 12,
        "mbps": 9999.0, "pages-per-second": 1}}}

    stats = completed_stats(sent, {"resumed_at": 100.05}, setup_s=0.05, total_s=0.25)

    assert stats["status"] == "completed"
    assert stats["total-time"] == 250
    assert stats["setup-time"] == 50
    assert stats["downtime"] == 50
    assert stats["ram"]["mbps"] == 25_000_000 * 8 / 0.2 / 1e6
    assert stats["ram"]["pages-per-second"] == round(7012 / 0.2)
    assert sent["stats"]["ram"]["mbps"] == 9999.0
