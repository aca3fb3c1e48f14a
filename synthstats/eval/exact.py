"""Exact metrics of a policy whose p_theta is enumerable (policy=slot) against its space's
target, in one call: what a slot run logs each evaluation step and writes to its report.
The slot policy can also write failure programs, so the metrics are of p_theta(. | valid)
with p(valid) beside them."""

from __future__ import annotations

from typing import Protocol

from synthstats.config import RewardConfig
from synthstats.envs.spaces.grammar import ProgramSpace
from synthstats.eval.metrics import (
    DEFAULT_FLOOR,
    DEFAULT_TOP_K,
    ExactMetrics,
    exact_metrics_given_valid,
)
from synthstats.eval.target import space_log_rewards
from synthstats.judge.space_scores import load_scores


class EnumerablePolicy(Protocol):
    def exact_log_probs(self, prompt_key: str | None = None) -> dict[str, float]: ...

    def learned_log_z(self, prompt_key: str | None = None) -> float: ...


def space_metrics(
    policy: EnumerablePolicy,
    space: ProgramSpace,
    *,
    reference_elpd: float,
    temperature: float | None = None,
    reward: RewardConfig | None = None,
    top_k: int = DEFAULT_TOP_K,
    floor: float = DEFAULT_FLOOR,
) -> ExactMetrics:
    """p_theta(. | valid) against p* = R / sum R with the run's reference ELPD, temperature
    (the space's own by default) and clamp, and p(valid); the log Z error is measured
    against the derivation's log sum R - log p(valid)."""
    log_reward = space_log_rewards(
        space,
        load_scores(space),
        reference_elpd=reference_elpd,
        temperature=temperature,
        reward=reward,
    )
    return exact_metrics_given_valid(
        log_reward,
        policy.exact_log_probs(),
        policy.learned_log_z(),
        top_k=top_k,
        floor=floor,
    )
