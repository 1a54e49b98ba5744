"""Robust online baselines of one per-minute series: median/MAD of the recent past, and an EWMA
profile per hour of week (falling back to hour of day while a week is not yet seen).

The upper band is ``center + k * spread``: ``center`` is the larger of the recent median and the
hour's EWMA (a Monday 9:00 ramp is not an anomaly once a Monday, or a 9:00, was seen), ``spread``
the largest of 1.4826 * MAD, the hour's EWMA deviation and half the center (a steady series
has a MAD of zero; a band that narrow would alert on noise). A job that runs at the same hour
every day (a nightly report) is a spike no median expects: the bound is also at least twice the
largest minute seen at this hour of the day on any day (decaying slowly, so a job that stopped
is forgotten in a few weeks). Explainable: every alert can print the band and where it came from.

>>> b = Baseline()
>>> for minute in range(120):
...     b.observe(minute * 60.0, 100.0 + (minute % 7))
>>> low, high = b.band(120 * 60.0, k=6.0)
>>> 100 <= low <= 106, 300 < high < 500
(True, True)
>>> b.minutes
120
>>> Baseline.from_state(b.state()).band(120 * 60.0, k=6.0) == (low, high)
True
"""

from __future__ import annotations

from collections import deque
from statistics import median

RECENT = 120  # minutes kept for median/MAD
ALPHA = 0.1  # EWMA weight of one minute in its hour-of-week slot (about 10 minutes of memory)
HOURS_OF_WEEK = 168
MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution
PEAK_DECAY = 0.999  # per observed minute in the slot: a peak loses half its weight in about 700 of them
PEAK_FACTOR = 2.0  # a minute up to twice the largest seen at this hour of the day is normal


def hour_of_week(epoch: float) -> int:
    """0 = Monday 00:00-01:00 UTC.

    >>> hour_of_week(0.0), hour_of_week(4 * 86400.0 + 3600 * 5)   # 1970-01-01 was a Thursday
    (72, 5)
    """
    days = int(epoch // 86400)
    return ((days + 3) % 7) * 24 + int(epoch % 86400 // 3600)


def ewma(previous: float | None, value: float, alpha: float = ALPHA) -> float:
    """Exponentially weighted moving average.

    >>> ewma(None, 4.0), ewma(4.0, 14.0, 0.5)
    (4.0, 9.0)
    """
    return value if previous is None else previous + alpha * (value - previous)


def mad(values: list[float]) -> tuple[float, float]:
    """(median, median absolute deviation).

    >>> mad([1.0, 2.0, 3.0, 4.0, 100.0])
    (3.0, 1.0)
    """
    if not values:
        return 0.0, 0.0
    mid = median(values)
    return mid, median(abs(v - mid) for v in values)


class Baseline:
    """One series (e.g. rows returned per minute by one user of one tenant)."""

    __slots__ = ("dev", "mean", "minutes", "peak", "recent")

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.mean: list[float | None] = [None] * HOURS_OF_WEEK  # EWMA of the value, per hour of week
        self.dev: list[float | None] = [None] * HOURS_OF_WEEK  # EWMA of |value - mean|
        self.peak: list[float] = [0.0] * HOURS_OF_WEEK  # the largest minute, slowly decaying
        self.minutes = 0  # minutes observed in all

    def observe(self, epoch: float, value: float) -> None:
        """One completed minute's value."""
        slot = hour_of_week(epoch)
        mean = self.mean[slot]
        self.dev[slot] = ewma(self.dev[slot], abs(value - mean) if mean is not None else 0.0)
        self.mean[slot] = ewma(mean, value)
        self.peak[slot] = max(value, self.peak[slot] * PEAK_DECAY)
        self.recent.append(value)
        self.minutes += 1

    def _hour(self, epoch: float) -> tuple[float, float] | None:
        """The hour of week's (mean, dev); else the same hour of the other days', averaged."""
        slot = hour_of_week(epoch)
        if self.mean[slot] is not None:
            return self.mean[slot] or 0.0, self.dev[slot] or 0.0
        same = [(m, self.dev[s] or 0.0) for s in range(slot % 24, HOURS_OF_WEEK, 24) if (m := self.mean[s]) is not None]
        if not same:
            return None
        return sum(m for m, _ in same) / len(same), sum(d for _, d in same) / len(same)

    def band(self, epoch: float, k: float) -> tuple[float, float]:
        """(center, upper bound) of a normal minute at ``epoch``."""
        mid, deviation = mad(list(self.recent))
        center, spread = mid, MAD_SCALE * deviation
        hour = self._hour(epoch)
        if hour is not None:
            center, spread = max(center, hour[0]), max(spread, hour[1])
        spread = max(spread, 0.5 * center)
        peak = max(self.peak[s] for s in range(hour_of_week(epoch) % 24, HOURS_OF_WEEK, 24))
        return center, max(center + k * spread, PEAK_FACTOR * peak)

    def state(self) -> dict[str, object]:
        return {"recent": list(self.recent), "mean": self.mean, "dev": self.dev, "peak": self.peak,
                "minutes": self.minutes}

    @classmethod
    def from_state(cls, data: dict[str, object]) -> Baseline:
        b = cls()
        b.recent.extend(float(v) for v in data["recent"])  # type: ignore[attr-defined]
        b.mean = [None if v is None else float(v) for v in data["mean"]]  # type: ignore[attr-defined]
        b.dev = [None if v is None else float(v) for v in data["dev"]]  # type: ignore[attr-defined]
        b.peak = [float(v) for v in data.get("peak", b.peak)]  # type: ignore[attr-defined]
        b.minutes = int(data["minutes"])  # type: ignore[call-overload]
        return b
