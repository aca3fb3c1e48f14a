"""Data leaks the contract's value check misses, checked in phase 2 on the rebuilt model.

The prompt shows the observed values, so a program can type them in. Besides the exact,
affine and lagged copies `contract.py` finds, two pattern rules and one rule that holds
whatever the encoding:

1. Permuted copy: a constant of the observed array's size whose sorted values are an
   affine function (either direction) of the sorted observed values, or of their logs, to
   within LEAK_TOLERANCE of the data's spread (6 significant digits, small perturbations,
   a reversal or a shuffle, exp then log all stay inside it).
2. Pieces: at least half of the observed values (and at least 3) found among the model's
   constants pooled together, each at 6 significant digits (a copy split into pieces).
   Only for observed arrays with non-integer values: counts coincide with indices.
   Both pattern rules skip observed arrays with fewer than MIN_DISTINCT distinct values
   (binary and small-count data), where "permuted" or "found" mean nothing.
3. Prior predictive: a model whose prior already predicts the observed data better than the
   env's reference model does after fitting has the data in it. The pointwise prior
   predictive log density, sum_i log mean_s p(y_i | theta_s) over PRIOR_DRAWS prior draws,
   above reference_elpd + PRIOR_MARGIN (per observation, times their count) is a leak.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pymc as pm
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph import ancestors
from pytensor.graph.basic import Constant
from scipy.special import logsumexp

from synthstats.judge.loglik import PointwiseLogLikelihood
from synthstats.judge.score import Failure

LEAK_TOLERANCE = 1e-3
MIN_DISTINCT = 5
MIN_SHARE = 0.5
PRIOR_DRAWS = 200
# Per observation: a prior is allowed this much above the reference's fitted ELPD.
PRIOR_MARGIN = 0.1


def check_leaks(
    model: pm.Model,
    observed: Mapping[str, np.ndarray],
    reference_elpd: float | None,
    seed: int,
    loglik: PointwiseLogLikelihood | None = None,
) -> None:
    """Raises Failure("data_leak") when the model holds a copy of the observed data.
    `loglik` (compiled here when not given) serves the prior rule."""
    constants = _constants(model)
    for name, array in observed.items():
        values = np.asarray(array, dtype=float).ravel()
        if np.unique(values).size < MIN_DISTINCT:
            continue
        for constant in constants:
            if constant.size == values.size and _sorted_affine(constant, values):
                raise Failure(
                    "data_leak",
                    f"a constant holds data[{name!r}] reordered or transformed "
                    "(its sorted values match the data's); observed data may only be observed",
                )
        if np.any(values != np.round(values)) and _pieces_found(constants, values):
            raise Failure(
                "data_leak",
                f"the model's constants hold over {MIN_SHARE:.0%} of data[{name!r}]'s values "
                "(at 6 significant digits); observed data may only be observed",
            )
    if reference_elpd is not None:
        if loglik is None:
            loglik = PointwiseLogLikelihood(model, [rv.name for rv in model.observed_RVs])
        _check_prior(model, observed, reference_elpd, seed, loglik)


def prior_lppd(model: pm.Model, loglik: PointwiseLogLikelihood, seed: int) -> float:
    """sum_i log mean_s p(y_i | theta_s) over prior draws theta_s."""
    free = [rv.name for rv in model.free_RVs]
    prior = pm.sample_prior_predictive(
        draws=PRIOR_DRAWS, model=model, var_names=free, random_seed=seed
    )
    pointwise_by_name = loglik.dataset(prior.prior)
    total = 0.0
    for name in loglik.names:
        pointwise = np.asarray(pointwise_by_name[name])
        pointwise = pointwise.reshape(-1, pointwise[0, 0].size)
        pointwise = np.where(np.isnan(pointwise), -np.inf, pointwise)  # invalid draws
        with np.errstate(all="ignore"):
            total += float(np.sum(logsumexp(pointwise, axis=0) - np.log(pointwise.shape[0])))
    return total


def _check_prior(
    model: pm.Model,
    observed: Mapping[str, np.ndarray],
    reference_elpd: float,
    seed: int,
    loglik: PointwiseLogLikelihood,
) -> None:
    if not model.free_RVs:
        lppd = float(sum(np.sum(values) for values in loglik.function({})))
    else:
        lppd = prior_lppd(model, loglik, seed)
    count = sum(np.size(array) for array in observed.values())
    limit = reference_elpd + PRIOR_MARGIN * count
    if np.isfinite(lppd) and lppd > limit:
        raise Failure(
            "data_leak",
            f"the prior alone predicts the observed data with log density {lppd:.1f}, above "
            f"the reference model's fitted ELPD plus margin ({limit:.1f}): the data is in "
            "the model",
        )


def _constants(model: pm.Model) -> list[np.ndarray]:
    roots = [*model.free_RVs, *model.observed_RVs, *model.deterministics]
    observed_values = {model.rvs_to_values[rv] for rv in model.observed_RVs}
    found = []
    for variable in ancestors(roots):
        if variable in observed_values:
            continue
        if isinstance(variable, Constant):
            value = variable.data
        elif isinstance(variable, SharedVariable):
            value = variable.get_value(borrow=True)
        else:
            continue
        if isinstance(value, np.ndarray | np.generic | int | float):
            array = np.asarray(value)
            if array.dtype.kind in "biuf" and array.size >= 1:
                found.append(array.astype(float).ravel())
    return found


def _sorted_affine(candidate: np.ndarray, values: np.ndarray) -> bool:
    targets = [values]
    if np.all(values > 0):
        targets.append(np.log(values))
    ordered = np.sort(candidate)
    for target in targets:
        ascending = np.sort(target)
        for reference in (ascending, ascending[::-1]):
            if _affine_within(ordered, reference):
                return True
    return False


def _affine_within(candidate: np.ndarray, target: np.ndarray) -> bool:
    """candidate ~ a * target + b with a != 0, residuals within the tolerance of spreads."""
    spread_t, spread_c = np.std(target), np.std(candidate)
    if spread_t == 0 or spread_c == 0:
        return False
    slope, intercept = np.polyfit(target, candidate, 1)
    if slope == 0:
        return False
    residual = np.max(np.abs(candidate - (slope * target + intercept)))
    return bool(residual <= LEAK_TOLERANCE * spread_c)


def _pieces_found(constants: list[np.ndarray], values: np.ndarray) -> bool:
    pool: dict[float, int] = {}
    for constant in constants:
        for value in _six_digits(constant):
            pool[value] = pool.get(value, 0) + 1
    found = 0
    for value in _six_digits(values):
        if pool.get(value, 0) > 0:
            pool[value] -= 1
            found += 1
    return found >= max(3, MIN_SHARE * values.size)


def _six_digits(values: np.ndarray) -> list[float]:
    return [float(f"{value:.6g}") for value in values]
