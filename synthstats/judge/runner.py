"""Scores one program in two phases that never share a process in the worker.

Phase 1 (`describe_source`, untrusted) runs the program with the env's data injected
read-only, with builtins stripped of what the gate forbids and an import guard that
re-applies the gate's allowlist at runtime; its own calls to pm.sample and friends end the
program where they stand (the model built so far is kept). Its only output is the model
description (`describe.py`). Phase 2 (`score_description`, trusted) validates and rebuilds
the model from that description (`rebuild.py`), checks the contract and leaks, samples with
the judge's budget (the same for every program) and computes ELPD-LOO.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pymc as pm

from synthstats.judge.compiler import compiled_seconds, compiling_with, hot_mode
from synthstats.judge.contract import check_contract
from synthstats.judge.describe import describe_model
from synthstats.judge.gate import (
    ALLOWED_MODULES,
    FORBIDDEN_NAMES,
    attribute_allowed,
    import_allowed,
)
from synthstats.judge.leaks import check_leaks
from synthstats.judge.loglik import PointwiseLogLikelihood
from synthstats.judge.loo import Refit, summarise_fit
from synthstats.judge.rebuild import rebuild_model
from synthstats.judge.score import Failure

_MESSAGE_CHARS = 400
_SAMPLE = pm.sample
# What a program may call but the judge neutralises: sampling is the judge's, not the program's.
_SAMPLING_FUNCTIONS = (
    pm.sample,
    pm.sample_smc,
    pm.sample_prior_predictive,
    pm.sample_posterior_predictive,
    pm.find_MAP,
    pm.fit,
    pm.compute_log_likelihood,
    pm.compute_log_prior,
    pm.init_nuts,
)

_ALLOWED_ROOTS = frozenset(module.split(".")[0] for module in ALLOWED_MODULES)

logging.getLogger("pymc").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Budget:
    """The NUTS budget every program is sampled with."""

    draws: int
    tune: int
    chains: int
    target_accept: float
    seed: int
    # At most this many exact refits for points with a bad Pareto k (loo.py); 0: PSIS only.
    loo_refits: int = 0
    # How the model's functions are compiled (compiler.py).
    compile: str = "whole_function"


class ForbiddenImport(ImportError):
    """The runtime import guard refused a module the gate would refuse."""


class _SamplingCalled(BaseException):
    """Raised by a neutralised sampler: the program stops there. Not an Exception, so a
    program's `except Exception` cannot swallow it and carry on with a missing result."""


def score_source(
    source: str,
    data: Mapping[str, np.ndarray],
    observed: tuple[str, ...],
    budget: Budget,
    reference_elpd: float | None = None,
) -> dict[str, Any]:
    """Both phases in this process, through the same JSON description: for TRUSTED
    programs only (warm-up, reference scoring); the worker runs each phase in its own child."""
    described = describe_source(source, data, observed)
    if not described["ok"]:
        return described
    description = json.loads(json.dumps(described["description"]))
    return score_description(description, data, observed, budget, reference_elpd)


def describe_source(
    source: str, data: Mapping[str, np.ndarray], observed: tuple[str, ...]
) -> dict[str, Any]:
    """Phase 1 (untrusted): run the program and describe its model as plain data."""
    try:
        model = run_program(source, data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            description = describe_model(model, {name: data[name] for name in observed})
    except Failure as failure:
        return {"ok": False, "error_kind": failure.kind, "message": failure.message}
    return {"ok": True, "description": description}


def score_description(
    description: Any,
    data: Mapping[str, np.ndarray],
    observed: tuple[str, ...],
    budget: Budget,
    reference_elpd: float | None = None,
) -> dict[str, Any]:
    """Phase 2 (trusted, no program code here): validate and rebuild the described model
    (a dict, or its JSON text) with the env's observed arrays, refuse leaks, sample with the
    judge's budget, LOO."""
    arrays = {name: np.asarray(data[name]) for name in observed}
    try:
        with compiling_with(budget.compile), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(description, str):
                try:
                    description = json.loads(description)
                except ValueError:
                    raise Failure("forbidden_model", "the description is not JSON") from None
            model = rebuild_model(description, arrays)
            holders = check_contract(model, arrays)
            compiled = compiled_seconds()
            loglik = PointwiseLogLikelihood(model, [holders[name] for name in observed])
            check_leaks(model, arrays, reference_elpd, budget.seed, loglik)
            fit = _fit(model, loglik, budget)
        fit["compile_seconds"] = compiled_seconds() - compiled
    except Failure as failure:
        return {"ok": False, "error_kind": failure.kind, "message": failure.message}
    except RecursionError:
        return {
            "ok": False,
            "error_kind": "forbidden_model",
            "message": "the description nests too deep",
        }
    return {"ok": True, **fit}


def run_program(source: str, data: Mapping[str, np.ndarray]) -> pm.Model:
    """Executes the program and returns the pm.Model it bound to `model`."""
    namespace = {
        "__builtins__": _program_builtins(),
        "__name__": "__program__",
        "data": _read_only(data),
    }
    try:
        code = compile(source, "<program>", "exec")
        with _sampling_neutralised(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(code, namespace)
    except _SamplingCalled:
        pass
    except MemoryError:
        raise Failure("memory", "ran out of memory while building the model") from None
    except ForbiddenImport as error:
        raise Failure("forbidden", str(error)) from None
    except SyntaxError as error:
        raise Failure("syntax", f"line {error.lineno}: {error.msg}") from None
    except BaseException as error:  # the program's own failure, SystemExit included
        raise Failure("runtime", _describe(error)) from None
    model = namespace.get("model")
    if not isinstance(model, pm.Model):
        raise Failure(
            "no_model", f"the program must bind `model` to a pm.Model, got {type(model).__name__}"
        )
    return model


def _fit(model: pm.Model, loglik: PointwiseLogLikelihood, budget: Budget) -> dict[str, Any]:
    """Samples and scores. Also the seconds spent sampling (refits included) and in LOO,
    each without the compiling done inside it (`compiled_seconds` counts that)."""
    spent = {"sampling": 0.0}
    sampler_mode = hot_mode(budget.compile)

    def sample(fitted: pm.Model) -> Any:
        start, compiled = time.perf_counter(), compiled_seconds()
        try:
            return _SAMPLE(
                draws=budget.draws,
                tune=budget.tune,
                chains=budget.chains,
                cores=1,
                target_accept=budget.target_accept,
                random_seed=budget.seed,
                progressbar=False,
                compute_convergence_checks=False,
                # PyMC marks its sampler's function trusted on a wrapper that never reads
                # the mark. NUTS passes float64 vectors and the allowlist refuses continuous
                # variables of other dtypes; discrete ones take Metropolis steps, which pass
                # their own dtype.
                compile_kwargs={"mode": sampler_mode, "trust_input": True},
                model=fitted,
            )
        finally:
            spent["sampling"] += time.perf_counter() - start - (compiled_seconds() - compiled)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = sample(model)
            start, compiled, sampled = time.perf_counter(), compiled_seconds(), spent["sampling"]
            loglik.add_to(idata)
            fit = summarise_fit(
                idata, loglik.names, Refit(model, sample, budget.loo_refits, loglik.dataset)
            )
    except MemoryError:
        raise Failure("memory", "ran out of memory while sampling") from None
    except Exception as error:
        raise Failure("sampling", _describe(error)) from None
    if not np.isfinite(fit["elpd_loo"]):
        raise Failure("sampling", "ELPD-LOO is not finite (the log-likelihood has -inf or nan)")
    elapsed = time.perf_counter() - start
    refits = spent["sampling"] - sampled
    loo = elapsed - refits - (compiled_seconds() - compiled)
    return {**fit, "sampling_seconds": spent["sampling"], "loo_seconds": loo}


def _program_builtins() -> dict[str, Any]:
    allowed = {
        name: value
        for name, value in vars(builtins).items()
        if name not in FORBIDDEN_NAMES and not name.startswith("_")
    }
    allowed["__build_class__"] = builtins.__build_class__  # class statements
    allowed["__import__"] = _guarded_import
    return allowed


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    """The gate's allowlist again at runtime, widened to whole allowed packages: numpy and
    scipy import their internals lazily from C, and those imports see the program's
    builtins (ndarray.mean imports numpy._core._methods)."""
    names = tuple(fromlist or ())
    inside = name.split(".")[0] in _ALLOWED_ROOTS and all(map(attribute_allowed, names))
    if level or not (import_allowed(name, names) or inside):
        shown = f"from {name} import {', '.join(names)}" if names else f"import {name}"
        raise ForbiddenImport(f"{shown} is not allowed")
    return builtins.__import__(name, globals, locals, fromlist, level)


def _read_only(data: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    arrays = {}
    for name, values in data.items():
        array = np.array(values, copy=True)
        array.setflags(write=False)
        arrays[name] = array
    return MappingProxyType(arrays)


@contextlib.contextmanager
def _sampling_neutralised() -> Iterator[None]:
    """Replaces every pymc module attribute bound to a sampler, then puts them back."""
    patched = []
    for module in [m for name, m in list(sys.modules.items()) if name.split(".")[0] == "pymc"]:
        for attribute, value in list(vars(module).items()):
            if any(value is function for function in _SAMPLING_FUNCTIONS):
                patched.append((module, attribute, value))
                setattr(module, attribute, _stop_program)
    try:
        yield
    finally:
        for module, attribute, value in patched:
            setattr(module, attribute, value)


def _stop_program(*args: Any, **kwargs: Any) -> None:
    raise _SamplingCalled


def _describe(error: BaseException) -> str:
    """'line N: Type: message' with the line in the program, if the error came from it."""
    frames = traceback.extract_tb(error.__traceback__)
    lines = [frame.lineno for frame in frames if frame.filename == "<program>"]
    try:
        text = str(error)
    except Exception:
        text = "(unprintable)"
    where = f"line {lines[-1]}: " if lines else ""
    message = f"{where}{type(error).__name__}: {text}".strip()
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 3] + "..."


# A tiny trusted model that exercises the whole scoring path.
WARM_UP_PROGRAM = (
    "import pymc as pm\n"
    "with pm.Model() as model:\n"
    "    mu = pm.Normal('mu', 0, 1)\n"
    "    pm.Normal('y', mu, 1, observed=data['y'])\n"
)
WARM_UP_DATA = {"y": np.linspace(-1.0, 1.0, 5)}


def warm_up(compile_mode: str = "whole_function") -> float:
    """Scores WARM_UP_PROGRAM in this process, so children forked later start with PyMC's
    internals loaded, the common ops compiled and the compiler prepared (compiler.py).
    Returns the seconds it took."""
    start = time.perf_counter()
    budget = Budget(draws=20, tune=20, chains=2, target_accept=0.9, seed=0, compile=compile_mode)
    result = score_source(WARM_UP_PROGRAM, WARM_UP_DATA, ("y",), budget)
    if not result["ok"]:
        raise RuntimeError(f"judge warm-up failed: {result['message']}")
    return time.perf_counter() - start
