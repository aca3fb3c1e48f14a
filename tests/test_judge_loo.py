"""LOO is paid only where it is reliable: points with a bad Pareto k get exact refits.

Real PyMC fits, in process (the LOO code is the same inside the sandboxed child).
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytest
from scipy.stats import norm

from synthstats.envs.catalog import get_env
from synthstats.judge.contract import check_contract
from synthstats.judge.loo import Refit, _folds, refit_log_likelihood, summarise_fit
from synthstats.judge.runner import _SAMPLE, Budget, run_program, score_source

BUDGET = Budget(draws=100, tune=100, chains=2, target_accept=0.9, seed=0, loo_refits=3)
# Per-observation effects with a tiny likelihood sigma: each point fits itself, so PSIS-LOO
# (Pareto k far above 0.7) pays it far above the honest model on dugongs.
PER_OBSERVATION_EFFECTS = """import pymc as pm
import numpy as np
with pm.Model() as model:
    a = pm.Normal('a', 0, 5)
    b = pm.HalfNormal('b', 2)
    e = pm.Normal('e', 0, 0.1, shape=len(data['length']))
    pm.Normal('y', a + b * np.log(data['age']) + e, 0.01, observed=data['length'])
"""


def _sample(model: pm.Model, draws: int = 500, tune: int = 300):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _SAMPLE(
            draws=draws,
            tune=tune,
            chains=2,
            cores=1,
            random_seed=1,
            progressbar=False,
            compute_convergence_checks=False,
            model=model,
        )


def test_a_refit_gives_the_exact_leave_one_out_predictive():
    """Normal mean, known sigma: log p(y_i | y_-i) is a closed-form Normal density."""
    y = np.array([0.1, -0.4, 0.3, 0.0, 1.0])
    prior_sd, sigma = 1.0, 0.5
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, prior_sd)
        pm.Normal("y", mu, sigma, observed=y)
    left_out = 4
    exact = refit_log_likelihood(Refit(model, _sample, 1), ["y"], [np.array([left_out])], 5)
    draws = exact[left_out]
    estimate = np.log(np.mean(np.exp(draws)))
    rest = np.delete(y, left_out)
    precision = 1 / prior_sd**2 + rest.size / sigma**2
    mean = rest.sum() / sigma**2 / precision
    truth = norm.logpdf(y[left_out], mean, np.sqrt(1 / precision + sigma**2))
    assert estimate == pytest.approx(truth, abs=0.05)
    # The full posterior (the point kept, as PSIS approximates) is more optimistic by 0.5.
    full = precision + 1 / sigma**2
    kept = norm.logpdf(y[left_out], y.sum() / sigma**2 / full, np.sqrt(1 / full + sigma**2))
    assert kept > truth + 0.5


def test_folds_are_one_per_bad_point_or_k_fold_over_all():
    assert [list(fold) for fold in _folds(np.array([3, 7]), 10, 5)] == [[3], [7]]
    k_fold = _folds(np.arange(8), 10, 3)
    assert [list(fold) for fold in k_fold] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def _psis_and_refit(source: str, env) -> tuple[dict, dict]:
    """The program's LOO fields by PSIS alone and with refits, from one and the same fit."""
    model = run_program(source, env.data)
    holders = check_contract(model, {name: env.data[name] for name in env.observed})
    names = [holders[name] for name in env.observed]
    idata = _sample(model, BUDGET.draws, BUDGET.tune)
    pm.compute_log_likelihood(idata, var_names=names, model=model, progressbar=False)
    refit = Refit(model, lambda fitted: _sample(fitted, BUDGET.draws, BUDGET.tune), 3)
    return summarise_fit(idata, names), summarise_fit(idata, names, refit)


def test_per_observation_effects_are_not_paid_above_the_honest_model():
    env = get_env("dugongs")
    honest = score_source(env.reference_program, env.data, env.observed, BUDGET)
    paid_before, attack = _psis_and_refit(PER_OBSERVATION_EFFECTS, env)
    assert honest["ok"]
    assert attack["pareto_k_bad"] > 3  # K-fold over every point
    assert paid_before["elpd_loo"] > honest["elpd_loo"] + 20  # what PSIS alone paid
    margin = 3 * max(honest["mcse_elpd"], attack["mcse_elpd"] or 0.0)
    assert attack["elpd_loo"] <= honest["elpd_loo"] + max(1.0, margin), (attack, honest)
