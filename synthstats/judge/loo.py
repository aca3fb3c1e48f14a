"""ELPD-LOO and sampler diagnostics of a fitted model, for arviz 0.x and 1.x.

Only the env's observed variables enter the ELPD: several are pooled into one pointwise
vector, so a program is scored on the data the env asks about and nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import arviz as az
import numpy as np
import xarray as xr

_POOLED = "judge_observed"
# The split-chain batches behind the rough MCSE of elpd_loo.
_BATCHES_PER_CHAIN = 2


def loo_fields(result: Any) -> dict[str, Any]:
    """arviz's LOO result as plain fields: the one place that knows both versions' names
    (0.x: elpd_loo, p_loo; 1.x: elpd, p)."""
    elpd = getattr(result, "elpd_loo", None)
    p = getattr(result, "p_loo", None)
    if elpd is None:  # arviz 1.x
        elpd, p = result.elpd, result.p
    return {
        "elpd": float(elpd),
        "se": float(result.se),
        "p": float(p),
        "pareto_k": np.asarray(result.pareto_k, dtype=float).ravel(),
        "good_k": float(getattr(result, "good_k", 0.7)),
    }


def summarise_fit(idata: Any, observed_names: Sequence[str]) -> dict[str, Any]:
    """elpd_loo, se, p_loo, Pareto-k summary, rough MCSE, divergences and max r-hat."""
    var_name = _pointwise_variable(idata, observed_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fields = loo_fields(az.loo(idata, var_name=var_name, pointwise=True, scale="log"))
        mcse = _batch_mcse(idata, var_name)
        rhat = az.rhat(idata.posterior)
    return {
        "elpd_loo": fields["elpd"],
        "se": fields["se"],
        "p_loo": fields["p"],
        "pareto_k_max": float(np.max(fields["pareto_k"])),
        "pareto_k_bad": int(np.sum(fields["pareto_k"] > fields["good_k"])),
        "mcse_elpd": mcse,
        "divergences": _divergences(idata),
        "rhat_max": _nanmax([np.asarray(rhat[name]) for name in rhat.data_vars]),
    }


def _pointwise_variable(idata: Any, observed_names: Sequence[str]) -> str:
    """The log-likelihood variable to score: the only observed one, or all of them pooled."""
    if len(observed_names) == 1:
        return observed_names[0]
    group = idata.log_likelihood
    pooled = [
        np.asarray(group[name]).reshape(group.sizes["chain"], group.sizes["draw"], -1)
        for name in observed_names
    ]
    idata.log_likelihood[_POOLED] = xr.DataArray(
        np.concatenate(pooled, axis=-1), dims=("chain", "draw", f"{_POOLED}_dim")
    )
    return _POOLED


def _batch_mcse(idata: Any, var_name: str) -> float | None:
    """sd / sqrt(K) of the ELPD over K contiguous draw batches: rough, but cheap."""
    n_chains, n_draws = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
    size = n_draws // _BATCHES_PER_CHAIN
    if size < 2:
        return None
    estimates = []
    for chain in range(n_chains):
        for start in range(0, size * _BATCHES_PER_CHAIN, size):
            batch = idata.isel(chain=[chain], draw=slice(start, start + size))
            estimates.append(loo_fields(az.loo(batch, var_name=var_name, scale="log"))["elpd"])
    if len(estimates) < 2 or not np.all(np.isfinite(estimates)):
        return None
    return float(np.std(estimates, ddof=1) / np.sqrt(len(estimates)))


def _divergences(idata: Any) -> int | None:
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "diverging" not in stats:
        return None
    return int(np.asarray(stats["diverging"]).sum())


def _nanmax(arrays: list[np.ndarray]) -> float | None:
    values = np.concatenate([array.ravel() for array in arrays]) if arrays else np.array([])
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else None
