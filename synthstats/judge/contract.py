"""The program contract, checked on the model graph rather than on the source text.

1. The observed variables hold exactly the env's observed arrays, one variable per array
   (`data_mismatch` otherwise): a program cannot win by inventing or transforming its data.
2. The observed arrays feed no other part of the model (`data_leak` otherwise): a mean set
   to the data, or to an affine copy or a long lagged window of it, predicts the data from
   itself. Detected by value among the graph's constants and shared variables, so it does
   not matter how the program spelled it. Nonlinear transforms computed in numpy before they
   enter the graph are beyond a value check.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pymc as pm
from numpy.lib.stride_tricks import sliding_window_view
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph import ancestors, graph_inputs
from pytensor.graph.basic import Constant, Variable

from synthstats.judge.score import Failure

# Fewer observations than this could match an unrelated constant by chance.
_MIN_COPY = 3
# A lagged window shorter than this share of the observations is not called a leak.
_MIN_WINDOW_SHARE = 0.5
_AFFINE_TOLERANCE = 1e-9
# Windows compared at once, bounding memory for long constants.
_WINDOW_CHUNK = 4096


def check_contract(model: pm.Model, observed: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Maps each env observed name to the model variable that holds it, or raises Failure."""
    matched = _match_observed(model, observed)
    _check_no_leak(model, observed)
    return matched


def _match_observed(model: pm.Model, observed: Mapping[str, np.ndarray]) -> dict[str, str]:
    holders: dict[str, str] = {}
    for rv in model.observed_RVs:
        values = _values_of(model.rvs_to_values[rv])
        names = [name for name, array in observed.items() if _same_values(values, array)]
        if not names:
            raise Failure(
                "data_mismatch",
                f"observed variable {rv.name!r} does not hold any of the env's observed "
                f"arrays exactly ({_spelled(observed)}); the env supplies the data",
            )
        if names[0] in holders:
            raise Failure(
                "data_mismatch",
                f"data[{names[0]!r}] is observed twice ({holders[names[0]]!r}, {rv.name!r})",
            )
        holders[names[0]] = rv.name
    missing = [name for name in observed if name not in holders]
    if missing:
        raise Failure(
            "data_mismatch",
            f"no observed variable holds {_spelled(missing)}; "
            f"pass it as observed= to the likelihood",
        )
    return holders


def _check_no_leak(model: pm.Model, observed: Mapping[str, np.ndarray]) -> None:
    observed_values = {model.rvs_to_values[rv] for rv in model.observed_RVs}
    roots = [*model.free_RVs, *model.observed_RVs, *model.deterministics, *model.potentials]
    for variable in ancestors(roots):
        if variable in observed_values:
            raise Failure("data_leak", f"the observed data {variable.name!r} also feeds the model")
        if not isinstance(variable, Constant | SharedVariable):
            continue
        values = _values_of(variable)
        if values is None or values.size < _MIN_COPY:
            continue
        for name, array in observed.items():
            if _contains_copy(values, array):
                raise Failure(
                    "data_leak",
                    f"data[{name!r}] (or an affine copy or lagged window of it) feeds the "
                    f"model outside its likelihood; observed data may only be observed",
                )


def _values_of(variable: Variable) -> np.ndarray | None:
    """The numeric value behind a constant, shared or constant-foldable variable."""
    if isinstance(variable, Constant):
        value = variable.data
    elif isinstance(variable, SharedVariable):
        value = variable.get_value(borrow=True)
    elif all(isinstance(v, Constant) for v in graph_inputs([variable])):
        value = variable.eval()
    else:
        return None
    if not isinstance(value, np.ndarray | np.generic | int | float):
        return None  # e.g. a random generator
    array = np.asarray(value)
    return array if array.dtype.kind in "biuf" else None


def _same_values(values: np.ndarray | None, expected: np.ndarray) -> bool:
    if values is None or values.size != expected.size:
        return False
    return bool(np.array_equal(values.ravel().astype(float), expected.ravel().astype(float)))


def _contains_copy(values: np.ndarray, observed: np.ndarray) -> bool:
    """Whether the whole, a row or a column of `values` copies the observed data: an affine
    copy of all of it, an exact window of at least half of it (a lag), or a superset."""
    target = observed.ravel().astype(float)
    if target.size < _MIN_COPY:
        return False
    candidates = [values.ravel()]
    if values.ndim == 2:
        candidates += [*values, *values.T]
    return any(_copies(candidate.astype(float), target) for candidate in candidates)


def _copies(candidate: np.ndarray, target: np.ndarray) -> bool:
    if candidate.size == target.size:
        return _affine(candidate, target)
    shortest_lag = max(_MIN_COPY, int(np.ceil(_MIN_WINDOW_SHARE * target.size)))
    if candidate.size < shortest_lag:
        return False
    shorter, longer = sorted((candidate, target), key=len)
    for start in range(0, longer.size - shorter.size + 1, _WINDOW_CHUNK):
        chunk = longer[start : start + _WINDOW_CHUNK + shorter.size - 1]
        if np.any(np.all(sliding_window_view(chunk, shorter.size) == shorter, axis=1)):
            return True
    return False


def _affine(candidate: np.ndarray, target: np.ndarray) -> bool:
    """candidate = a * target + b for some a != 0, up to rounding."""
    centred_candidate = candidate - candidate.mean()
    centred_target = target - target.mean()
    scales = np.linalg.norm(centred_candidate) * np.linalg.norm(centred_target)
    if scales == 0:
        return False
    correlation = centred_candidate @ centred_target / scales
    return bool(abs(correlation) > 1 - _AFFINE_TOLERANCE)


def _spelled(names) -> str:
    return ", ".join(f"data[{name!r}]" for name in names)
