"""The page stream's credit window, without a bus."""

import pytest

from agents.migration_core import AckOutOfRange, CreditWindow


def test_window_limits_unacked_batches():
    flow = CreditWindow(window=4, ack_every=2)
    requested = []
    while flow.can_send():
        requested.append(flow.next_batch(last_of_pass=False))
    assert requested == [(1, False), (2, True), (3, False), (4, True)]
    assert flow.in_flight == 4
    flow.on_ack(2)
    assert flow.in_flight == 2
    assert flow.can_send()


def test_last_batch_requests_ack():
    flow = CreditWindow(window=8, ack_every=4)
    assert flow.next_batch(last_of_pass=True) == (1, True)


def test_stale_ack_changes_nothing():
    flow = CreditWindow(window=8, ack_every=2)
    for _ in range(4):
        flow.next_batch(last_of_pass=False)
    flow.on_ack(4)
    flow.on_ack(2)
    assert flow.acked == 4


@pytest.mark.parametrize("seq", [0, 5, -1, "3", None, 2.0])
def test_ack_of_unsent_batch_rejected(seq):
    flow = CreditWindow(window=8, ack_every=2)
    for _ in range(4):
        flow.next_batch(last_of_pass=False)
    with pytest.raises(AckOutOfRange):
        flow.on_ack(seq)
    assert flow.acked == 0


@pytest.mark.parametrize("window, ack_every", [(4, 4), (4, 0), (0, 0), (4.0, 2)])
def test_invalid_window_rejected(window, ack_every):
    with pytest.raises(ValueError, match="invalid credit window"):
        CreditWindow(window, ack_every)
