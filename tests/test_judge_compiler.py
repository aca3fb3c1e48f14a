"""The judge's whole-function compile (judge/compiler.py): the same numbers as PyTensor's
per-op linker (ops whose C code reads an input's Python object included), a per-op
fallback where one module cannot be right, and a precompiled header that is checked before
it is used."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.link.c.basic import _CThunk
from pytensor.link.c.cmodule import GCC_compiler
from pytensor.tensor.basic import scalar_from_tensor, tensor_from_scalar

from synthstats.judge import compiler
from synthstats.judge.compiler import (
    COMPILE_MODES,
    PerOpLinker,
    WholeFunctionLinker,
    compiled_seconds,
    hot_mode,
    prepare_precompiled_header,
)
from synthstats.judge.runner import Budget, score_source


def _model() -> pm.Model:
    with pm.Model() as model:
        intercept = pm.Normal("intercept", 0, 1)
        slope = pm.HalfNormal("slope", 1)
        pm.Normal("y", intercept + slope * np.arange(5.0), 1, observed=np.linspace(0, 1, 5))
    return model


def test_both_linkers_compute_the_same_log_density_and_gradient():
    model = _model()
    point = {name: value + 0.3 for name, value in model.initial_point().items()}
    computed = {}
    for mode, linker in zip(COMPILE_MODES, (WholeFunctionLinker, PerOpLinker), strict=True):
        before = compiled_seconds()
        logp, dlogp = (
            model.compile_logp(mode=hot_mode(mode)),
            model.compile_dlogp(mode=hot_mode(mode)),
        )
        assert isinstance(logp.f.maker.linker, linker)
        assert compiled_seconds() > before  # the judge's time shares see the compile
        computed[mode] = (logp(point), dlogp(point))
    (logp_a, dlogp_a), (logp_b, dlogp_b) = computed.values()
    np.testing.assert_allclose(logp_a, logp_b, rtol=1e-12)
    np.testing.assert_allclose(dlogp_a, dlogp_b, rtol=1e-12)


def test_a_function_with_an_op_without_c_code_is_linked_per_op():
    model = _model()
    draws = pm.draw(model["slope"], draws=4, random_seed=1, mode=hot_mode("whole_function"))
    assert draws.shape == (4,) and (draws > 0).all()


def test_a_new_model_structure_costs_one_compiler_run_and_scores_as_per_op(monkeypatch):
    """Only the sampler's function is compiled; the initial point, trace, prior draws and
    pointwise log-likelihood run in Python, with the same ELPD as compiled per op."""
    source = (
        "import pymc as pm\n"
        "with pm.Model() as model:\n"
        "    mu = pm.Normal('mu', 0, 1)\n"
        "    sigma = pm.HalfNormal('sigma', 1)\n"
        f"    pm.Normal('y', mu * {np.random.default_rng().uniform(1, 2):.12f}, sigma,"
        " observed=data['y'])\n"  # a constant no module was compiled for
    )
    data = {"y": np.linspace(-1.0, 2.0, 7)}
    runs = []
    compile_str = GCC_compiler.compile_str

    def counted(*args, **kwargs):
        runs.append(kwargs.get("module_name", args[:1]))
        return compile_str(*args, **kwargs)

    monkeypatch.setattr(GCC_compiler, "compile_str", staticmethod(counted))
    scores = {}
    for mode in COMPILE_MODES:
        budget = Budget(draws=100, tune=100, chains=2, target_accept=0.9, seed=3, compile=mode)
        runs.clear()
        scores[mode] = score_source(source, data, ("y",), budget)
        assert scores[mode]["ok"], scores[mode]
        if mode == "whole_function":
            assert len(runs) == 1, runs
    assert scores["whole_function"]["elpd_loo"] == pytest.approx(
        scores["per_op"]["elpd_loo"], abs=1e-9
    )


def test_the_precompiled_header_is_rebuilt_when_damaged_and_refused_when_unbuildable(
    tmp_path, caplog, monkeypatch
):
    built = tmp_path / "synthstats-pch" / "judge_headers.h.gch"
    try:
        assert prepare_precompiled_header(tmp_path)
        assert built.stat().st_size > 1_000_000
        built.write_bytes(b"not a precompiled header")
        assert prepare_precompiled_header(tmp_path)
        assert built.stat().st_size > 1_000_000
        built.write_bytes(b"not a precompiled header")
        monkeypatch.setattr(compiler, "_COMMON_HEADERS", ("no_such_header.h",))
        with caplog.at_level(logging.WARNING, logger="synthstats.judge.compiler"):
            assert not prepare_precompiled_header(tmp_path)
        assert "refuses the precompiled header" in caplog.text
        logp = _model().compile_logp(mode=hot_mode("whole_function"))  # compiles without it
        assert np.isfinite(logp(_model().initial_point()))
    finally:
        monkeypatch.undo()
        prepare_precompiled_header(Path(pytensor.config.compiledir))


def _both_modes(inputs: list, outputs: list) -> dict:
    return {mode: pytensor.function(inputs, outputs, mode=hot_mode(mode)) for mode in COMPILE_MODES}


def test_ops_using_a_computed_tensors_python_object_run_in_one_module():
    """Subtensor's view and IncSubtensor's copy read the Python object of their input;
    in one module a computed input has none unless the judge gives its C variable."""
    x = pt.dvector("x")
    computed = pt.exp(x)
    total = (
        (computed[1:] * 2).sum()
        + pt.set_subtensor(computed[:2], 0.0).sum()
        + pt.inc_subtensor(computed[1], 3.0).sum()
    )
    functions = _both_modes([x], [total, pytensor.grad(total, x)])
    assert isinstance(functions["whole_function"].vm, _CThunk)  # one module, no fallback
    point = np.array([0.1, -0.2, 0.3])
    for _ in range(3):  # the module's storage is reused between calls
        whole, per_op = functions["whole_function"](point), functions["per_op"](point)
        for ours, theirs in zip(whole, per_op, strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-12)
        point = point + 0.5


def test_a_function_needing_a_computed_scalars_python_object_is_linked_per_op():
    x = pt.dvector("x")
    doubled = tensor_from_scalar(scalar_from_tensor(pt.exp(x).sum()) * 2)
    functions = _both_modes([x], [doubled])
    assert not isinstance(functions["whole_function"].vm, _CThunk)
    point = np.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(
        functions["whole_function"](point)[0], functions["per_op"](point)[0], rtol=1e-12
    )


def test_a_module_key_does_not_depend_on_where_the_precompiled_header_lives(tmp_path):
    """Workers copy a seed compile dir into dirs of their own: the same function must find
    the seed's module there."""
    model = _model()
    keys = []
    try:
        for folder in ("a", "b"):
            assert prepare_precompiled_header(tmp_path / folder)
            logp = model.compile_logp(mode=hot_mode("whole_function"))
            linker = logp.f.maker.linker
            assert any(arg.endswith("judge_headers.h") for arg in linker.compile_args())
            keys.append(linker.cmodule_key())
    finally:
        prepare_precompiled_header(Path(pytensor.config.compiledir))
    assert keys[0] == keys[1]
