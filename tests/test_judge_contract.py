"""The in-child runner, run in this process: the model-graph contract, neutralised samplers,
the judge's own NUTS budget and ELPD-LOO. Real PyMC throughout."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from synthstats.judge.loo import loo_fields
from synthstats.judge.runner import Budget, score_source

AGE = [1, 1.5, 1.5, 1.5, 2.5, 4, 5, 5, 7, 8, 8.5, 9, 9.5, 9.5, 10, 12, 12, 13, 13, 14.5, 15.5]
AGE += [15.5, 16.5, 17, 22.5, 29, 31.5]
LENGTH = [1.80, 1.85, 1.87, 1.77, 2.02, 2.27, 2.15, 2.26, 2.47, 2.19, 2.26, 2.40, 2.39, 2.41]
LENGTH += [2.50, 2.32, 2.32, 2.43, 2.47, 2.56, 2.65, 2.47, 2.64, 2.56, 2.70, 2.72, 2.57]
DATA = {"age": np.array(AGE), "length": np.array(LENGTH)}
BUDGET = Budget(draws=150, tune=150, chains=2, target_accept=0.9, seed=0)

HEADER = "import pymc as pm\nimport numpy as np\n"
GOOD = HEADER + (
    "with pm.Model() as model:\n"
    "    a = pm.Normal('a', 0, 5)\n"
    "    b = pm.HalfNormal('b', 2)\n"
    "    s = pm.HalfNormal('s', 1)\n"
    "    pm.Normal('length', a + b * np.log(data['age']), s, observed=data['length'])\n"
)


def score(source: str, data=DATA, observed=("length",)) -> dict:
    return score_source(source, data, observed, BUDGET)


def verdict(result: dict) -> dict:
    """A score without how long its parts took, which no seed fixes."""
    timings = ("compile_seconds", "sampling_seconds", "loo_seconds")
    return {key: value for key, value in result.items() if key not in timings}


def model_with(likelihood: str, prelude: str = "") -> str:
    return (
        HEADER
        + prelude
        + (
            "with pm.Model() as model:\n"
            "    a = pm.Normal('a', 0, 5)\n"
            "    s = pm.HalfNormal('s', 1)\n"
            f"    {likelihood}\n"
        )
    )


@pytest.fixture(scope="module")
def good_score() -> dict:
    return score(GOOD)


def test_valid_program_scores_with_diagnostics(good_score):
    assert good_score["ok"], good_score
    assert 15 < good_score["elpd_loo"] < 35  # dugongs log-age regression
    assert good_score["se"] > 0 and 0 < good_score["p_loo"] < 10
    assert good_score["pareto_k_bad"] == 0 and good_score["pareto_k_max"] < 0.7
    assert good_score["divergences"] >= 0 and good_score["rhat_max"] < 1.2
    assert 0 < good_score["mcse_elpd"] < 1
    assert good_score["compile_seconds"] >= 0 and good_score["sampling_seconds"] > 0
    assert good_score["loo_seconds"] > 0


def test_scoring_is_deterministic_for_a_seed(good_score):
    assert verdict(score(GOOD)) == verdict(good_score)


def test_program_sampling_is_neutralised_and_the_judge_budget_used(good_score):
    program = GOOD + (
        "    idata = pm.sample(draws=5000, tune=5000, chains=8)\n"
        "raise RuntimeError('code after pm.sample must not run')\n"
    )
    assert verdict(score(program)) == verdict(good_score)
    prior = GOOD + "    pm.sample_prior_predictive(10)\n    pm.find_MAP()\n"
    assert verdict(score(prior)) == verdict(good_score)


@pytest.mark.parametrize(
    "likelihood",
    [
        "pm.Normal('y', a, s, observed=np.linspace(1.5, 3.0, 27))",  # fabricated data
        "pm.Normal('y', a, s, observed=np.log(data['length']))",  # transformed data
        "pm.Normal('y', a, s, observed=data['length'][:-1])",  # dropped a point
        "pm.Normal('y', a, s, observed=data['age'])",  # the wrong variable
        "pm.Normal('y', a, s, observed=data['length'])\n"
        "    pm.Normal('fake', a, s, observed=np.full(27, 9.0))",  # invented extra data
        "pm.Normal('y', a, s, observed=data['length'])\n"
        "    pm.Normal('y2', a, s, observed=data['length'])",  # observed twice
        "pm.Normal('y', a, s, shape=27)",  # nothing observed
    ],
)
def test_data_mismatch(likelihood):
    result = score(model_with(likelihood))
    assert result["error_kind"] == "data_mismatch", result


@pytest.mark.parametrize(
    "likelihood, prelude",
    [
        ("pm.Normal('length', mu=data['length'], sigma=s, observed=data['length'])", ""),
        ("pm.Normal('length', a * data['length'], s, observed=data['length'])", ""),
        (
            "pm.Normal('length', a + z, s, observed=data['length'])",
            "z = (data['length'] - 2) / 3\n",
        ),
        (
            "pm.Normal('length', pm.math.concatenate([[2.0], lag]) * a, s, "
            "observed=data['length'])",
            "lag = data['length'][:-1]\n",
        ),
        (
            "pm.Normal('length', a, s, observed=data['length'])\n"
            "    pm.Deterministic('d', a * np.asarray(data['length']))",
            "",
        ),
        (
            "y_data = pm.Data('y_data', data['length'])\n"
            "    pm.Normal('length', y_data * a, s, observed=y_data)",
            "",
        ),
    ],
)
def test_data_leak(likelihood, prelude):
    result = score(model_with(likelihood, prelude))
    assert result["error_kind"] == "data_leak", result


def test_lazy_imports_inside_allowed_packages_pass_the_runtime_guard():
    """ndarray.mean imports numpy._core._methods from C, with the program's builtins."""
    program = GOOD.replace("np.log(data['age'])", "(data['age'] - data['age'].mean())")
    assert score(program)["ok"]


def test_discrete_latent_variables_are_sampled_and_scored():
    # NUTS's function trusts its float64 input; the discrete latents take Metropolis steps,
    # which must still pass their own integer values through.
    source = HEADER + (
        "with pm.Model() as model:\n"
        "    a = pm.Normal('a', 0, 5)\n"
        "    k = pm.Poisson('k', 3.0)\n"
        "    z = pm.Bernoulli('z', 0.5)\n"
        "    s = pm.HalfNormal('s', 1)\n"
        "    pm.Normal('length', a + 0.01 * k + 0.01 * z, s, observed=data['length'])\n"
    )
    result = score(source)
    assert result["ok"], result
    assert np.isfinite(result["elpd_loo"])
    assert score(source)["elpd_loo"] == result["elpd_loo"]  # seeded Metropolis too


def test_covariates_and_sorted_data_are_not_leaks():
    program = model_with(
        "pm.Normal('length', a + s * np.asarray(data['age']) / 30, s, observed=data['length'])"
    )
    assert score(program)["ok"]


@pytest.mark.parametrize(
    "source, kind, message",
    [
        ("x = 1\n", "no_model", "bind `model`"),
        (GOOD.replace("as model", "as m"), "no_model", "bind `model`"),
        (HEADER + "model = 3\n", "no_model", "int"),
        (HEADER + "x = 1\nraise ValueError('boom')\n", "runtime", "line 4: ValueError: boom"),
        (HEADER + "raise SystemExit(3)\n", "runtime", "SystemExit"),
        ("f = open\n", "runtime", "NameError"),  # builtins without open, even past the gate
        ("import os\n", "forbidden", "import os"),  # the runtime import guard
        ("from numpy import save\n", "forbidden", "from numpy import save"),
        ("import numpy\nfrom pytensor import configdefaults\n", "forbidden", "configdefaults"),
        (GOOD.replace("HalfNormal('s', 1)", "Normal('s', -100, 1)"), "sampling", ""),
    ],
)
def test_failure_kinds(source, kind, message):
    result = score(source)
    assert result["error_kind"] == kind and message in result["message"], result


def test_several_observed_arrays_are_pooled():
    data = {"a": np.array([0.1, -0.3, 0.4, 0.2, -0.1]), "b": np.array([1.2, 0.8, 1.1, 0.9])}
    program = HEADER + (
        "with pm.Model() as model:\n"
        "    mu = pm.Normal('mu', 0, 1)\n"
        "    pm.Normal('a', mu, 1, observed=data['a'])\n"
        "    pm.Normal('b', mu + 1, 1, observed=data['b'])\n"
    )
    both = score(program, data, ("a", "b"))
    assert both["ok"], both
    only_a = score(program.replace("observed=data['b']", "shape=4"), data, ("a",))
    assert both["elpd_loo"] < only_a["elpd_loo"]  # nine pointwise terms against five


def test_loo_field_names_of_arviz_0_and_1_map_to_the_same_fields():
    pareto = np.array([0.1, 0.9])
    old = SimpleNamespace(elpd_loo=-3.0, se=0.5, p_loo=1.5, pareto_k=pareto, good_k=0.7)
    new = SimpleNamespace(elpd=-3.0, se=0.5, p=1.5, pareto_k=pareto, good_k=0.7)
    assert loo_fields(old).keys() == loo_fields(new).keys()
    for key in ("elpd", "se", "p", "good_k"):
        assert loo_fields(old)[key] == loo_fields(new)[key]
