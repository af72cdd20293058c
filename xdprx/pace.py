"""Pacing for senders: at most @rate packets/s over any window, never a
catch-up burst.

A sender that falls behind its schedule (descheduled, a slow syscall) must not
send the backlog at full speed to catch up: that burst is what overruns a
receiver's FILL ring on a busy machine. Falling behind by more than @slack
packets moves the schedule instead."""
import time


class Pacer:
    def __init__(self, rate: float | None, slack: int = 64) -> None:
        self.rate = rate
        self.slack = slack
        self._t0 = time.monotonic()
        self._base = 0          # packets sent when the schedule was last anchored

    def wait(self, sent: int) -> None:
        """Sleep until packet @sent may go out."""
        if not self.rate:
            return
        now = time.monotonic()
        ahead = self._t0 + (sent - self._base) / self.rate - now
        if ahead > 0:
            time.sleep(ahead)
        elif -ahead * self.rate > self.slack:   # behind: re-anchor, do not burst
            self._t0, self._base = now, sent
