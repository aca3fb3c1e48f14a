"""The reward transform, owned here alone: ELPD score -> log R at the current temperature.

    log R = clamp((elpd - reference_elpd) / T, low, high)    for programs that scored
    log R = failure_log_reward                                for programs that did not

so the GFlowNet samples programs with probability proportional to
exp((elpd - reference_elpd) / T): a program T nats of ELPD better than another is e times
as likely. Judge, score cache and replay keep raw ELPD and the temperature is applied at
batch time, so annealing T never leaves stale rewards behind. low, high and the failure
value are in log-reward units (after dividing by T) so residuals stay of order tens. A
failed program must rank below every valid one, so failure_log_reward < low is enforced
(an earlier attempt gave failures log R = 0, above most valid programs).

Temperature schedules (step counted in optimizer steps): constant; linear or geometric
interpolation from `temperature` to `final_temperature` over `anneal_steps`, then held.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from synthstats.config import RewardConfig

ArrayLike = Tensor | np.ndarray | Sequence[float | None]


def log_reward_from_elpd(
    elpd: ArrayLike,
    ok: ArrayLike,
    *,
    reference_elpd: float | ArrayLike,
    temperature: float,
    low: float = -20.0,
    high: float = 50.0,
    failure_log_reward: float = -25.0,
) -> Tensor:
    """[B] float32 log R. A program counts as failed if ok is false or its ELPD is not finite."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not low < high:
        raise ValueError(f"need low < high, got low={low}, high={high}")
    if not failure_log_reward < low:
        raise ValueError(
            f"failure_log_reward ({failure_log_reward}) must be below low ({low}): "
            "a failed program may never outrank a valid one"
        )
    scores = _as_float64(elpd)
    scored = _as_bool(ok, scores.device) & torch.isfinite(scores)
    reference = _as_float64(reference_elpd).to(scores.device)
    tempered = ((scores - reference) / temperature).clamp(low, high)
    return torch.where(scored, tempered, failure_log_reward).float()


def anneal_temperature(
    step: int,
    *,
    initial: float,
    final: float | None,
    steps: int,
    schedule: str = "constant",
) -> float:
    """The reward temperature at optimizer step `step`."""
    if schedule not in _SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {tuple(_SCHEDULES)}")
    if initial <= 0 or (final is not None and final <= 0):
        raise ValueError(f"temperatures must be positive, got {initial} -> {final}")
    if final is None or steps <= 0:
        return float(initial)
    progress = min(max(step, 0) / steps, 1.0)
    return float(_SCHEDULES[schedule](initial, final, progress))


def temperature_at(step: int, cfg: RewardConfig) -> float:
    """anneal_temperature with the fields of a RewardConfig."""
    return anneal_temperature(
        step,
        initial=cfg.temperature,
        final=cfg.final_temperature,
        steps=cfg.anneal_steps,
        schedule=cfg.schedule,
    )


def tempered_log_reward(
    elpd: ArrayLike,
    ok: ArrayLike,
    *,
    reference_elpd: float | ArrayLike,
    step: int,
    cfg: RewardConfig,
) -> Tensor:
    """log_reward_from_elpd at the temperature that cfg's schedule gives for `step`."""
    return log_reward_from_elpd(
        elpd,
        ok,
        reference_elpd=reference_elpd,
        temperature=temperature_at(step, cfg),
        low=cfg.low,
        high=cfg.high,
        failure_log_reward=cfg.failure_log_reward,
    )


def clamp_hits(
    elpd: ArrayLike, *, reference_elpd: float, step: int, cfg: RewardConfig
) -> tuple[int, int]:
    """How many of these (valid) ELPDs the clamp cuts at low and at high at this step."""
    tempered = (_as_float64(elpd) - reference_elpd) / temperature_at(step, cfg)
    return int((tempered <= cfg.low).sum()), int((tempered >= cfg.high).sum())


_SCHEDULES: dict[str, Callable[[float, float, float], float]] = {
    "constant": lambda initial, final, progress: initial,
    "linear": lambda initial, final, progress: initial + (final - initial) * progress,
    "geometric": lambda initial, final, progress: initial * (final / initial) ** progress,
}


def _as_float64(values: float | ArrayLike) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().to(torch.float64)
    return torch.from_numpy(np.asarray(values, dtype=np.float64))


def _as_bool(values: ArrayLike, device: torch.device) -> Tensor:
    if isinstance(values, Tensor):
        return values.to(device=device, dtype=torch.bool)
    return torch.from_numpy(np.asarray(values, dtype=bool)).to(device)
