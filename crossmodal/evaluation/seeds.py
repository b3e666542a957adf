"""Statistics over seeds for comparisons of training recipes: mean with a 95 % confidence interval (Student's t)
and paired differences against a baseline run with the same seed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the half-width of its two-sided confidence interval (``nan`` for n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def format(self, digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        if self.n == 1 or math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """``mean ± t_{(1+level)/2, n-1} · s / √n`` (sample standard deviation ``s``)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0)
    mean = math.fsum(vals) / n
    if n == 1:
        return Interval(mean, float("nan"), 1)
    from scipy.stats import t

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    return Interval(mean, float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n), n)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float], level: float = 0.95,
                      ) -> Interval:
    """``mean_ci`` of ``values[seed] − baseline[seed]`` over the seeds both have."""
    seeds = sorted(set(values) & set(baseline))
    return mean_ci([values[s] - baseline[s] for s in seeds], level)
