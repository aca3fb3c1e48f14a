"""Acceptance on the shipped envs, with real PyMC: each reference program scores within
max(1, 3 x MCSE) of the ELPD recorded with its env under the default judge, and every
shipped demonstration scores ok (on a short chain). Timeouts are raised here only so that
a loaded test machine cannot turn a slow program into a failure."""

from __future__ import annotations

import dataclasses

import pytest

from synthstats.config import load_judge_config
from synthstats.envs import env_names, get_env
from synthstats.judge.pool import JudgePool

ENV_NAMES = env_names()
PATIENT_S = 900.0


def fenced(program: str) -> str:
    return f"```python\n{program}\n```\n"


@pytest.fixture(scope="module")
def reference_scores():
    judge_cfg = dataclasses.replace(load_judge_config("default"), timeout_s=PATIENT_S)
    envs = [get_env(name) for name in ENV_NAMES]
    with JudgePool(judge_cfg, cache=False) as pool:
        futures = [pool.submit(env, fenced(env.reference_program)) for env in envs]
        return {env.name: future.result() for env, future in zip(envs, futures, strict=True)}


def test_ten_envs_ship():
    assert len(ENV_NAMES) == 10


@pytest.mark.parametrize("name", ENV_NAMES)
def test_reference_program_scores_its_recorded_elpd(name, reference_scores):
    env, score = get_env(name), reference_scores[name]
    assert score.ok, score
    assert env.reference_elpd is not None, f"{name}: no reference_elpd recorded"
    tolerance = max(1.0, 3 * (score.mcse_elpd or 0.0))
    assert abs(score.elpd_loo - env.reference_elpd) <= tolerance, (score, env.reference_elpd)


def test_every_demonstration_scores_ok():
    # Whether a program scores at all needs neither a long chain nor LOO refits (a short
    # chain has many points of bad Pareto k): compiling dominates.
    judge_cfg = dataclasses.replace(
        load_judge_config("fast"), draws=50, tune=50, chains=1, timeout_s=PATIENT_S, loo_refits=0
    )
    demonstrations = [
        (name, number, record["completion"])
        for name in ENV_NAMES
        for number, record in enumerate(get_env(name).demonstrations())
    ]
    assert len(demonstrations) >= len(ENV_NAMES)
    with JudgePool(judge_cfg, cache=False) as pool:
        futures = [pool.submit(get_env(name), text) for name, _, text in demonstrations]
        failures = [
            f"{name} #{number}: {score.error_kind}: {score.message}"
            for (name, number, _), future in zip(demonstrations, futures, strict=True)
            if not (score := future.result()).ok
        ]
    assert not failures, "\n".join(failures)
