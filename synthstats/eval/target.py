"""The exact target of a space, p*(x) = R(x) / sum R, and how hard it is to match.

R comes from the shared reward transform (`log_reward_from_elpd`), with the reference ELPD
and temperature the training run uses, so the target is exactly what the loop optimises.
Shifting the reference moves every log R alike and leaves p* unchanged unless the clamp
binds; log sum R, which the learned log Z must match, moves with it. Slot runs take the
space's best ELPD as reference (`space_reference_elpd`), so log R <= 0.

A space's reward temperature is chosen so that neither a collapsed nor an untrained policy
passes: the largest p* stays below 0.5 and TV(uniform, p*) is at least 0.3. Lower T
sharpens p* (raising both); `choose_temperature` picks the middle, in log T, of the range
where both hold. Print a space's table with `python -m synthstats.eval.target ENV`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthstats.config import RewardConfig
from synthstats.envs.spaces.grammar import ProgramSpace
from synthstats.eval.metrics import target_probabilities, total_variation
from synthstats.judge.space_scores import SpaceScores
from synthstats.objectives import log_reward_from_elpd

MAX_TOP_PROBABILITY = 0.5
MIN_TV_FROM_UNIFORM = 0.3
# Candidate temperatures: round numbers, so a chosen T reads well in a config.
TEMPERATURE_GRID = tuple(
    float(f"{mantissa * 10.0**exponent:.3g}")
    for exponent in range(-2, 3)
    for mantissa in (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
)


@dataclass(frozen=True)
class TargetHardness:
    temperature: float
    max_probability: float
    tv_from_uniform: float

    @property
    def hard_enough(self) -> bool:
        return (
            self.max_probability < MAX_TOP_PROBABILITY
            and self.tv_from_uniform >= MIN_TV_FROM_UNIFORM
        )


def space_reference_elpd(scores: SpaceScores) -> float:
    """The reference ELPD a slot run should use: the space's best, so every log R <= 0 and
    the clamp's upper bound never flattens the top of p*."""
    return float(np.nanmax(np.where(scores.ok, scores.elpd, np.nan)))


def space_log_rewards(
    space: ProgramSpace,
    scores: SpaceScores,
    *,
    reference_elpd: float,
    temperature: float | None = None,
    reward: RewardConfig | None = None,
) -> dict[str, float]:
    """log R of every program (keyed by completion text) at the space's temperature unless
    one is given, with the clamp and failure value of `reward` (defaults of RewardConfig)."""
    reward = reward or RewardConfig()
    log_reward = log_reward_from_elpd(
        scores.elpd,
        scores.ok,
        reference_elpd=reference_elpd,
        temperature=temperature or space.reward_temperature,
        low=reward.low,
        high=reward.high,
        failure_log_reward=reward.failure_log_reward,
    )
    return dict(zip(space.completions, log_reward.double().tolist(), strict=True))


def hardness(elpd: np.ndarray, temperature: float) -> TargetHardness:
    """Largest p* and TV(uniform, p*) of p* proportional to exp(elpd / T) (no clamp)."""
    target = target_probabilities(np.asarray(elpd, float) / temperature)
    uniform = np.full(target.size, 1.0 / target.size)
    return TargetHardness(temperature, float(target.max()), total_variation(uniform, target))


def choose_temperature(elpd: np.ndarray, grid: Sequence[float] = TEMPERATURE_GRID) -> float:
    """The grid temperature nearest, in log T, to the middle of the hard-enough range."""
    feasible = [t for t in grid if hardness(elpd, t).hard_enough]
    if not feasible:
        raise ValueError("no temperature on the grid makes this target hard enough")
    middle = np.sqrt(min(feasible) * max(feasible))
    return min(feasible, key=lambda t: abs(np.log(t / middle)))


def main(argv: Sequence[str] | None = None) -> None:
    """Prints, for one space, max p* and TV(uniform, p*) across the temperature grid."""
    from synthstats.envs.spaces import get_space
    from synthstats.judge.space_scores import load_scores

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("env")
    space = get_space(parser.parse_args(argv).env)
    scores = load_scores(space)
    elpd = scores.elpd[scores.ok]
    print(f"{space.env_name}: {len(space)} programs, {int(scores.ok.sum())} scored ok")
    for temperature in TEMPERATURE_GRID:
        row = hardness(elpd, temperature)
        mark = "*" if row.hard_enough else " "
        print(
            f"{mark} T={temperature:<6g} max p*={row.max_probability:.3f} "
            f"TV(uniform, p*)={row.tv_from_uniform:.3f}"
        )
    print(f"chosen: T={choose_temperature(elpd)} (shipped: T={space.reward_temperature})")


if __name__ == "__main__":
    main()
