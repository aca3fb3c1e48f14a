"""Exact metrics of a slot policy while it trains: the hook a slot run hands the loop.

`Trainer.run(state, progress)` calls `progress(1)` after every step; a `MetricsTracker` is
that callable. It advances the progress bar and, every `interval` steps and at the last,
measures p_theta(. | valid) against p* and p(valid) over the whole space and its failure
programs (one forward pass, milliseconds), keeping
the history for the report and plots and appending it to evaluation.jsonl. The loop stays
backend-agnostic: only the tracker knows the policy is enumerable.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthstats.config import RewardConfig
from synthstats.envs.spaces.grammar import ProgramSpace
from synthstats.eval.exact import EnumerablePolicy
from synthstats.eval.metrics import (
    exact_metrics_given_valid,
    target_probabilities,
    total_variation,
)
from synthstats.eval.target import space_log_rewards
from synthstats.judge.space_scores import SpaceScores

log = logging.getLogger("synthstats.eval")


@dataclass(frozen=True)
class SpaceTarget:
    """p* = R / sum R over a space at one run's reference ELPD, temperature and clamp."""

    space: ProgramSpace
    temperature: float
    reference_elpd: float
    log_reward: dict[str, float]  # completion text -> log R, in space.completions order

    @classmethod
    def of(
        cls, space: ProgramSpace, scores: SpaceScores, reference_elpd: float, reward: RewardConfig
    ) -> SpaceTarget:
        log_reward = space_log_rewards(
            space,
            scores,
            reference_elpd=reference_elpd,
            temperature=reward.temperature,
            reward=reward,
        )
        return cls(space, reward.temperature, reference_elpd, log_reward)

    @property
    def probabilities(self) -> np.ndarray:
        return target_probabilities(np.array(list(self.log_reward.values())))

    @property
    def max_probability(self) -> float:
        """Above 0.5, a policy collapsed on the best program would be close to p*."""
        return float(self.probabilities.max())

    @property
    def tv_from_uniform(self) -> float:
        """Small, and an untrained (near-uniform) policy would be close to p*."""
        target = self.probabilities
        return total_variation(np.full(target.size, 1.0 / target.size), target)


class MetricsTracker:
    """The loop's progress hook: exact metrics of `policy` every `interval` steps."""

    def __init__(
        self,
        name: str,
        policy: EnumerablePolicy,
        target: SpaceTarget,
        *,
        interval: int,
        total: int,
        path: Path,
        advance: Callable[[int], Any],
        learned_log_z: bool,
    ) -> None:
        self.name = name
        self.policy = policy
        self.target = target
        self.interval = interval
        self.total = total
        self.path = path
        self.advance = advance
        self.learned_log_z = learned_log_z
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._console_every = max(1, total // 10)

    def __call__(self, steps: int) -> None:
        self.advance(steps)
        self.step += steps
        if self.step % self.interval == 0 or self.step == self.total:
            self.record()

    def record(self) -> dict[str, Any]:
        """Measure the policy now; step 0 is recorded by calling this before training."""
        log_z = self.policy.learned_log_z() if self.learned_log_z else math.nan
        metrics = exact_metrics_given_valid(
            self.target.log_reward, self.policy.exact_log_probs(), log_z
        )
        row = {"policy": self.name, "step": self.step, "log_z": log_z, **metrics.to_dict()}
        self.history.append(row)
        with self.path.open("a") as file:
            file.write(json.dumps(finite(row)) + "\n")
        if self.step % self._console_every == 0 or self.step == self.total:
            log.info(
                "%s step %d: TV %.4f, p(valid) %.4f, KL %.4f, log Z error %.3f, modes covered %.2f",
                self.name,
                self.step,
                metrics.tv,
                metrics.p_valid,
                metrics.kl,
                metrics.logz_error,
                metrics.modes_covered,
            )
        return row


def finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: null instead (an unlearned log Z, an infinite KL)."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in row.items()
    }
