"""The reward transform and the temperature schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthstats.config import RewardConfig
from synthstats.objectives import (
    anneal_temperature,
    log_reward_from_elpd,
    temperature_at,
    tempered_log_reward,
)
from synthstats.objectives.reward import clamp_hits


def test_log_reward_is_the_clamped_tempered_elpd_gain():
    elpd = [-100.0, -96.0, 100.0, -500.0]
    log_r = log_reward_from_elpd(elpd, [True] * 4, reference_elpd=-100.0, temperature=2.0)
    assert log_r.dtype == torch.float32
    assert log_r.tolist() == [0.0, 2.0, 50.0, -20.0]


def test_failed_programs_rank_below_every_valid_one():
    elpd = np.array([-1e9, np.nan, -90.0, -40.0])
    ok = np.array([True, True, False, True])
    log_r = log_reward_from_elpd(elpd, ok, reference_elpd=-100.0, temperature=1.0)
    assert log_r.tolist() == [-20.0, -25.0, -25.0, 50.0]
    assert log_reward_from_elpd([None], [True], reference_elpd=0.0, temperature=1.0).item() == -25.0


def test_reward_accepts_tensors_and_a_reference_per_row():
    elpd = torch.tensor([-10.0, -20.0], requires_grad=True)
    log_r = log_reward_from_elpd(
        elpd, torch.tensor([True, True]), reference_elpd=np.array([-12.0, -18.0]), temperature=0.5
    )
    assert log_r.tolist() == [4.0, -4.0]
    assert not log_r.requires_grad


def test_temperature_sets_how_much_likelier_a_better_program_is():
    log_r = log_reward_from_elpd(
        [-10.0, -13.0], [True, True], reference_elpd=-12.0, temperature=3.0
    )
    assert math.exp(log_r[0] - log_r[1]) == pytest.approx(math.e)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"failure_log_reward": -20.0}, "failure_log_reward"),
        ({"low": 5.0, "high": 5.0}, "low < high"),
    ],
)
def test_reward_settings_are_validated(kwargs, match):
    settings = {"temperature": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        log_reward_from_elpd([0.0], [True], reference_elpd=0.0, **settings)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 50, 4.0),
        ("linear", 0, 4.0),
        ("linear", 50, 2.5),
        ("linear", 100, 1.0),
        ("linear", 1000, 1.0),
        ("geometric", 50, 2.0),
        ("geometric", 100, 1.0),
    ],
)
def test_temperature_schedules(schedule, step, expected):
    got = anneal_temperature(step, initial=4.0, final=1.0, steps=100, schedule=schedule)
    assert got == pytest.approx(expected)


def test_no_final_temperature_or_no_steps_means_no_annealing():
    assert anneal_temperature(10, initial=3.0, final=None, steps=100, schedule="linear") == 3.0
    assert anneal_temperature(10, initial=3.0, final=1.0, steps=0, schedule="linear") == 3.0
    with pytest.raises(ValueError, match="unknown schedule"):
        anneal_temperature(0, initial=1.0, final=None, steps=0, schedule="cosine")
    with pytest.raises(ValueError, match="positive"):
        anneal_temperature(0, initial=1.0, final=0.0, steps=10, schedule="geometric")


def test_config_driven_reward_uses_the_scheduled_temperature():
    cfg = RewardConfig(
        temperature=4.0,
        final_temperature=1.0,
        anneal_steps=10,
        schedule="linear",
        low=-5.0,
        high=5.0,
        failure_log_reward=-6.0,
    )
    assert temperature_at(5, cfg) == pytest.approx(2.5)
    log_r = tempered_log_reward([-95.0, 0.0], [True, False], reference_elpd=-100.0, step=5, cfg=cfg)
    assert log_r.tolist() == [2.0, -6.0]
    assert temperature_at(0, RewardConfig()) == 1.0


def test_no_shipped_space_program_or_reference_hits_the_upper_clamp_at_the_default_t():
    """The zero point (the env's reference ELPD) and `high` leave every program a user can
    see in a shipped space, and the reference itself, below the upper clamp."""
    from synthstats.config import RewardConfig
    from synthstats.envs import get_env
    from synthstats.envs.spaces import SPACES
    from synthstats.judge.space_scores import load_scores

    cfg = RewardConfig()
    for name, space in SPACES.items():
        reference = get_env(name).reference_elpd
        scores = load_scores(space)
        elpd = np.append(scores.elpd[scores.ok], reference)
        assert clamp_hits(elpd, reference_elpd=reference, step=0, cfg=cfg)[1] == 0, name
        assert ((elpd - reference) / cfg.temperature).max() < cfg.high - 10, name
