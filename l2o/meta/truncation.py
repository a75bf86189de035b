"""Truncation schedules: how many inner steps an inner training run (an episode) lasts."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod

__all__ = ["ConstantSchedule", "LogUniformSchedule", "SCHEDULES", "TruncationSchedule"]


class TruncationSchedule(ABC):
    """Draws the length (number of inner steps) of each episode."""

    @abstractmethod
    def sample(self, seed: int) -> int:
        """The episode length for ``seed`` (deterministic)."""


class ConstantSchedule(TruncationSchedule):
    """Every episode lasts ``length`` inner steps."""

    def __init__(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"episode length must be >= 1, got {length}")
        self.length = length

    def sample(self, seed: int) -> int:
        return self.length


class LogUniformSchedule(TruncationSchedule):
    """Episode lengths log-uniform in ``[min_length, max_length]``."""

    def __init__(self, min_length: int, max_length: int) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
        self.min_length, self.max_length = min_length, max_length

    def sample(self, seed: int) -> int:
        u = random.Random(seed).random()
        log_length = math.log(self.min_length) + u * (math.log(self.max_length) - math.log(self.min_length))
        return min(self.max_length, max(self.min_length, round(math.exp(log_length))))


SCHEDULES: dict[str, type[TruncationSchedule]] = {
    "constant": ConstantSchedule,
    "log_uniform": LogUniformSchedule,
}
