"""Training statistics a manifest ships for the service's drift signals (service/quality/drift.py).

Export writes `preprocessing["training_statistics"] = {name: {"mean": m, "std": s}}`: the training split's value
of each input statistic that the service measures on live requests.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict


def bernoulli_std(p: float) -> float:
    """Standard deviation of a 0/1 indicator with mean `p` (a missing-value share)."""
    return math.sqrt(max(p * (1.0 - p), 0.0))


class TrainingStatistic(BaseModel):
    """One statistic of the training split: its mean and standard deviation."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    std: float = 0.0

    @classmethod
    def share(cls, p: float) -> TrainingStatistic:
        """The statistic of a 0/1 indicator (e.g. "this value is missing") that is true a share `p` of the time."""
        return cls(mean=float(p), std=bernoulli_std(float(p)))
