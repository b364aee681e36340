"""Flow control of the page stream: numbered batches, cumulative acknowledgements, a credit window.

The source numbers every batch of a migration from 1 and requests an
acknowledgement on every `ack_every`-th batch and on the last batch of a pass.
An acknowledgement names the highest batch the destination has applied, and
since batches arrive in order it covers every batch before it. The source
sends while fewer than `window` batches are unacknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass


class AckOutOfRange(ValueError):
    """An acknowledgement for a batch that was never sent: the peer is broken."""

    def __init__(self, seq: object, sent: int) -> None:
        self.seq = seq
        self.sent = sent
        super().__init__(f"acknowledgement of batch {seq!r}, but batches 1..{sent} were sent")


@dataclass
class CreditWindow:
    window: int = 32
    ack_every: int = 4
    sent: int = 0
    acked: int = 0

    def __post_init__(self) -> None:
        if type(self.window) is not int or type(self.ack_every) is not int or not 0 < self.ack_every < self.window:
            raise ValueError(f"invalid credit window: window={self.window!r}, ack_every={self.ack_every!r}; "
                             "expected ints with 0 < ack_every < window")

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked

    def can_send(self) -> bool:
        return self.in_flight < self.window

    def next_batch(self, last_of_pass: bool) -> tuple[int, bool]:
        """Number the next batch; return (its number, whether to request an acknowledgement)."""
        self.sent += 1
        return self.sent, last_of_pass or self.sent % self.ack_every == 0

    def on_ack(self, seq: object) -> None:
        """Record an acknowledgement of every batch up to `seq`; a stale one changes nothing."""
        if type(seq) is not int or not 0 < seq <= self.sent:
            raise AckOutOfRange(seq, self.sent)
        self.acked = max(self.acked, seq)
