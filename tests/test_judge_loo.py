"""LOO is paid only where it is reliable: points with a bad Pareto k get exact refits.

Real PyMC fits, in process (the LOO code is the same inside the sandboxed child).
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
import xarray as xr
from scipy.stats import norm

from synthstats.envs.catalog import get_env
from synthstats.judge.contract import check_contract
from synthstats.judge.loglik import PointwiseLogLikelihood
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
    refit = Refit(model, _sample, 1, PointwiseLogLikelihood(model, ["y"]).dataset)
    exact = refit_log_likelihood(refit, ["y"], [np.array([left_out])], 5)
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
    loglik = PointwiseLogLikelihood(model, names)
    refit = Refit(
        model, lambda fitted: _sample(fitted, BUDGET.draws, BUDGET.tune), 3, loglik.dataset
    )
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


def _per_draw(model: pm.Model, names: list[str], posterior) -> dict[str, np.ndarray]:
    """PyMC's own pointwise log-likelihood, one compiled call per draw."""
    idata = az.InferenceData(posterior=posterior)
    group = pm.compute_log_likelihood(
        idata, var_names=names, model=model, progressbar=False
    ).log_likelihood
    return {name: np.asarray(group[name]) for name in names}


def test_the_batched_log_likelihood_is_pymcs_draw_by_draw_one():
    """Vectorised over draws (a term no free variable enters included), it gives PyMC's
    values bit for bit; where a draw has an invalid parameter (a negative scale: the
    batched graph raises), it falls back to PyMC's draw-by-draw -inf for that draw."""
    rng = np.random.default_rng(3)
    with pm.Model() as model:
        slope = pm.Normal("slope", 0, 1, shape=3)
        scale = pm.Normal("scale", 1, 0.5)
        pm.Normal(
            "y",
            pm.math.dot(np.ones((4, 3)), slope),
            pm.math.exp(scale),
            observed=rng.normal(size=4),
        )
        pm.Normal("z", 0.0, 2.0, observed=rng.normal(size=2))
        pm.Normal("w", slope[0], scale, observed=rng.normal(size=5))
    names = ["y", "z", "w"]
    draws = rng.normal(size=(2, 150, 4))
    draws[..., 3] = np.abs(draws[..., 3]) + 0.1
    posterior = xr.Dataset(
        {
            "slope": (("chain", "draw", "slope_dim_0"), draws[..., :3]),
            "scale": (("chain", "draw"), draws[..., 3]),
        }
    )
    loglik = PointwiseLogLikelihood(model, names)
    batched = loglik.dataset(posterior)
    assert loglik._batched is not None  # vectorised, so the comparison means something
    expected = _per_draw(model, names, posterior)
    for name in names:
        assert np.array_equal(np.asarray(batched[name]), expected[name]), name
    draws[0, 7, 3] = -1.0  # an invalid scale for w in one draw
    posterior["scale"] = (("chain", "draw"), draws[..., 3])
    fallen_back = loglik.dataset(posterior)
    expected = _per_draw(model, names, posterior)
    assert np.all(np.isneginf(expected["w"][0, 7]))
    for name in names:
        assert np.array_equal(np.asarray(fallen_back[name]), expected[name]), name


def test_batching_a_scan_leaves_the_models_gradient_intact():
    """A vectorised Scan wraps the model's own Scan op, whose inner graph compiling
    rewrites in place: the lotka_volterra demonstrations lost their gradient (and NUTS)."""
    with pm.Model() as model:
        rate = pm.LogNormal("rate", 0.0, 0.3)
        path = pytensor.scan(
            lambda level, rate: level * (1.0 + 0.1 * rate),
            outputs_info=pt.as_tensor(np.array(5.0)),
            non_sequences=[rate],
            n_steps=4,
            return_updates=False,
        )
        pm.Poisson("counts", mu=path, observed=np.array([5, 6, 6, 7]))
    posterior = xr.Dataset({"rate": (("chain", "draw"), np.full((1, 3), 1.2))})
    loglik = PointwiseLogLikelihood(model, ["counts"])
    values = loglik.dataset(posterior)["counts"]
    assert loglik._batched is not None
    expected = _per_draw(model, ["counts"], posterior)["counts"]
    np.testing.assert_allclose(np.asarray(values), expected, rtol=1e-12)  # the last bit differs
    dlogp = model.compile_dlogp()
    assert np.isfinite(dlogp(model.initial_point())).all()
