"""Red team of the judge's trust boundary: what a program does where it runs (phase 1)
must not reach its score (phase 2), and phase 2 takes only models it can rebuild itself.

Fast parts run here in-process, without sampling: attack models and forged descriptions
go straight to phase 2's validation and rebuild, and leak variants to its leak checks.
One worker then scores honest, tampering and forging programs in turn (real bubblewrap
and forks when available), and the honest program scores the same before and after.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from pytensor.compile.ops import as_op
from scipy.optimize import minimize_scalar
from scipy.stats import binom

from synthstats.config import JudgeConfig
from synthstats.envs import env_names, get_env
from synthstats.judge import leaks
from synthstats.judge.contract import check_contract
from synthstats.judge.describe import describe_model
from synthstats.judge.rebuild import rebuild_model
from synthstats.judge.runner import describe_source
from synthstats.judge.sandbox import SandboxedWorker, bwrap_works
from synthstats.judge.score import Failure

DUGONGS = get_env("dugongs")
LENGTH = np.asarray(DUGONGS.data["length"])
AGE = np.asarray(DUGONGS.data["age"])
OBSERVED = {"length": LENGTH}
HONEST = DUGONGS.reference_program


def phase_two(description: dict, observed=OBSERVED) -> pm.Model:
    """Phase 2's checks short of sampling: rebuild, contract, pattern leak rules."""
    model = rebuild_model(json.loads(json.dumps(description)), observed)
    check_contract(model, observed)
    leaks.check_leaks(model, observed, None, seed=0)
    return model


def verdict(build) -> tuple[str, str]:
    """(kind, message) of a model that trusted test code builds, through both phases."""
    with pm.Model() as model:
        build()
    try:
        phase_two(describe_model(model, OBSERVED))
    except Failure as failure:
        return failure.kind, failure.message
    return "ok", ""


def honest_description() -> dict:
    return describe_source(HONEST, DUGONGS.data, ("length",))["description"]


def _priors():
    a = pm.Normal("a", 2.5, 1.0)
    s = pm.HalfNormal("s", 0.5)
    return a, s


def custom_plus_five():
    a, s = _priors()
    pm.CustomDist(
        "length",
        a,
        s,
        logp=lambda value, mu, sigma: pm.logp(pm.Normal.dist(mu, sigma), value) + 5,
        observed=LENGTH,
    )


def custom_constant():
    a, _ = _priors()
    pm.CustomDist("length", a, logp=lambda value, mu: pt.zeros_like(value), observed=LENGTH)


def density_dist():
    a, s = _priors()
    pm.DensityDist("length", a, s, logp=lambda v, mu, sigma: -((v - mu) ** 2), observed=LENGTH)


def total_size():
    a, s = _priors()
    pm.Normal("length", a, s, observed=LENGTH, total_size=2700)


def potential():
    a, s = _priors()
    latent = pm.Normal("latent", 0, 1, shape=LENGTH.size)
    pm.Potential("tie", -1e4 * (latent - 2.0) ** 2)
    pm.Normal("length", a + 0 * latent, s, observed=LENGTH)


def callback():
    a, s = _priors()

    @as_op(itypes=[pt.dscalar], otypes=[pt.dvector])
    def secret_mean(value):
        return np.full(LENGTH.size, float(value))

    pm.Normal("length", secret_mean(a), s, observed=LENGTH)


def mixture_spikes():
    _, s = _priors()
    spikes = np.unique(LENGTH)
    weights = np.ones(spikes.size) / spikes.size
    pm.NormalMixture("length", w=weights, mu=spikes, sigma=0.001 + 0 * s, observed=LENGTH)


def single_precision():
    """Phase 2 calls the sampler's function with trust_input: it must only ever see the
    float64 vectors PyMC's NUTS passes, so a free variable of another dtype is refused."""
    a = pm.Normal("a", 2.5, 1.0, dtype="float32")
    s = pm.HalfNormal("s", 0.5)
    pm.Normal("length", a, s, observed=LENGTH)


def misnamed():
    a, s = _priors()
    pm.Normal("y", a, s, observed=LENGTH)


@pytest.mark.parametrize(
    "build, kind, named",
    [
        (custom_plus_five, "forbidden_model", "CustomDist"),
        (custom_constant, "forbidden_model", "CustomDist"),
        (density_dist, "forbidden_model", "CustomDist"),
        (total_size, "forbidden_model", "total_size"),
        (potential, "forbidden_model", "Potential"),
        (callback, "forbidden_model", "callback"),
        (mixture_spikes, "forbidden_model", "Mixture"),
        (single_precision, "forbidden_model", "NormalRV"),
        (misnamed, "data_mismatch", "name the likelihood"),
    ],
)
def test_constructs_outside_the_allowlist_are_refused_by_name(build, kind, named):
    assert verdict(build)[0] == kind
    assert named in verdict(build)[1]


def test_a_model_subclass_is_refused():
    class Swapping(pm.Model):
        def logp(self, *args, **kwargs):
            return super().logp(*args, **kwargs) + 100

    with Swapping() as model:
        a, s = _priors()
        pm.Normal("length", a, s, observed=LENGTH)
    with pytest.raises(Failure, match="subclass") as refused:
        describe_model(model, OBSERVED)
    assert refused.value.kind == "forbidden_model"


def test_initial_values_are_dropped_not_refused():
    with pm.Model() as model:
        a = pm.Normal("a", 2.3, 1.0, initval=2.0)
        pm.Normal("length", a, 0.3, observed=LENGTH)
    assert [rv.name for rv in phase_two(describe_model(model, OBSERVED)).free_RVs] == ["a"]


def _forge(change) -> tuple[str, str]:
    description = copy.deepcopy(honest_description())
    change(description)
    try:
        phase_two(description)
    except Failure as failure:
        return failure.kind, failure.message
    return "ok", ""


def _node(description: dict, class_end: str) -> dict:
    return next(n for n in description["nodes"] if n["op"]["class"].endswith(class_end))


def _observed_index(description: dict) -> int:
    return next(i for i, v in enumerate(description["variables"]) if v["kind"] == "observed")


def _replace_constant_input_with_observed(description: dict) -> None:
    """The mean's constant age vector swapped for the observed data itself."""
    for node in description["nodes"]:
        for position, index in enumerate(node["inputs"]):
            entry = description["variables"][index]
            if entry["kind"] == "constant" and len(entry["data"]["values"]) == LENGTH.size:
                node["inputs"][position] = _observed_index(description)
                return
    raise AssertionError("no constant input of the data's size")


def _value_from_another_variable(description: dict) -> None:
    """A free variable whose value is another variable's output: a Potential in disguise."""
    free = [n for n in description["nodes"] if n["op"]["class"].endswith("ModelFreeRV")]
    free[1]["inputs"][1] = free[0]["outputs"][0]


def _huge(description: dict) -> None:
    description["nodes"] = description["nodes"] * 5000


def _deep(description: dict) -> None:
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    description["nodes"][0]["op"]["props"] = {"new_order": nested}


@pytest.mark.parametrize(
    "name, change",
    [
        ("unknown op", lambda d: _node(d, "NormalRV")["op"].update({"class": "os.system"})),
        (
            "odd module path",
            lambda d: _node(d, "NormalRV")["op"].update({"class": "__program__.NormalRV"}),
        ),
        (
            "odd RV props",
            lambda d: _node(d, "NormalRV")["op"]["props"].update({"name": "boosted"}),
        ),
        (
            "in-place pattern",
            lambda d: _node(d, "Elemwise")["op"]["props"].update(
                {"inplace_pattern": {"mapping": [[0, 0]]}}
            ),
        ),
        (
            "scalar op from elsewhere",
            lambda d: _node(d, "Elemwise")["op"]["props"].update(
                {"scalar_op": {"scalar_op": "builtins.exec"}}
            ),
        ),
        (
            "potential node",
            lambda d: _node(d, "ModelFreeRV")["op"].update(
                {"class": "pymc.model.fgraph.ModelPotential", "props": {}}
            ),
        ),
        (
            "foreign transform",
            lambda d: _node(d, "ModelFreeRV")["op"].update(
                {"props": {"transform": "__program__.Boost"}}
            ),
        ),
        ("version", lambda d: d.update({"version": 99})),
        ("computed value", _value_from_another_variable),
        ("dangling reference", lambda d: d["nodes"][0]["inputs"].append(10**6)),
        ("huge graph", _huge),
        (
            "object constant",
            lambda d: next(v for v in d["variables"] if v["kind"] == "constant")["data"].update(
                {"dtype": "object"}
            ),
        ),
        ("observed reused as a mean", _replace_constant_input_with_observed),
        (
            "unknown observed name",
            lambda d: d["variables"][_observed_index(d)].update({"env_name": "age"}),
        ),
    ],
)
def test_forged_descriptions_are_refused(name, change):
    expected = {
        "observed reused as a mean": "data_leak",
        "unknown observed name": "data_mismatch",
    }.get(name, "forbidden_model")
    got, message = _forge(change)
    assert got == expected, (name, got, message)


def test_deeply_nested_description_is_refused_without_crashing():
    from synthstats.judge.runner import Budget, score_description

    description = copy.deepcopy(honest_description())
    _deep(description)
    budget = Budget(draws=10, tune=10, chains=1, target_accept=0.9, seed=0)
    result = score_description(description, DUGONGS.data, ("length",), budget)
    assert result["error_kind"] == "forbidden_model", result
    text = '{"version": 1, "nodes": ' + "[" * 100_000 + "]" * 100_000 + "}"  # as phase 1 sends
    result = score_description(text, DUGONGS.data, ("length",), budget)
    assert result["error_kind"] == "forbidden_model", result


def test_honest_description_rebuilds_the_same_model():
    model = phase_two(honest_description())
    original = describe_source(HONEST, DUGONGS.data, ("length",))
    assert original["ok"]
    assert [rv.name for rv in model.free_RVs] == ["alpha", "beta", "gamma", "sigma"]
    point = model.initial_point()
    assert np.isfinite(model.compile_logp(mode="FAST_COMPILE")(point))


@pytest.mark.parametrize("name", env_names())
def test_every_reference_round_trips_to_the_same_description(name):
    """describe(rebuild(d)) has d's ops, constants and names: the rebuilt graph is the
    program's (no compile needed; test_honest_description_... checks one logp)."""
    env = get_env(name)
    observed = {key: np.asarray(env.data[key]) for key in env.observed}
    described = describe_source(env.reference_program, env.data, tuple(env.observed))
    assert described["ok"], described
    rebuilt = phase_two(described["description"], observed)
    assert _signature(describe_model(rebuilt, observed)) == _signature(described["description"])


def _signature(description: dict) -> tuple:
    """What a rebuild must keep, independent of numbering and order: every op with its
    props, every constant, every named variable."""
    ops = sorted(json.dumps(node["op"], sort_keys=True) for node in description["nodes"])
    constants = sorted(
        json.dumps(entry.get("data"), sort_keys=True)
        for entry in description["variables"]
        if entry["kind"] in ("constant", "shared", "observed")
    )
    names = sorted({entry["name"] for entry in description["variables"] if "name" in entry})
    return ops, constants, names


@pytest.mark.parametrize(
    "family",
    [
        lambda: pm.HalfCauchy("scale", 1.0),
        lambda: pm.HalfStudentT("scale", nu=3, sigma=1.0),
        lambda: pm.Weibull("scale", alpha=2.0, beta=1.0),
    ],
)
def test_symbolic_random_variables_rebuild_from_their_family_name(family):
    with pm.Model() as model:
        scale = family()
        pm.Normal("length", 2.3, scale, observed=LENGTH)
    described = describe_model(model, OBSERVED)
    rebuilt = phase_two(described)
    assert _signature(describe_model(rebuilt, OBSERVED)) == _signature(described)


# -- data leaks ---------------------------------------------------------------------------

RNG = np.random.default_rng(0)


def _leaky(mean: np.ndarray) -> str:
    with pm.Model() as model:
        s = pm.HalfNormal("s", 0.5)
        pm.Normal("length", pt.as_tensor(mean), 0.001 + 0 * s, observed=LENGTH)
    try:
        phase_two(describe_model(model, OBSERVED))
    except Failure as failure:
        return failure.kind
    return "ok"


def _split_mean() -> np.ndarray:
    pieces = [pt.as_tensor(LENGTH[:9]), pt.as_tensor(LENGTH[9:18]), pt.as_tensor(LENGTH[18:])]
    return pt.concatenate(pieces)


@pytest.mark.parametrize(
    "name, mean",
    [
        ("typed at 6 significant digits", np.array([float(f"{v:.6g}") for v in LENGTH])),
        ("permuted", RNG.permutation(LENGTH)),
        ("reversed", LENGTH[::-1].copy()),
        ("affine of a permutation", 3.0 * RNG.permutation(LENGTH) - 1.0),
        ("perturbed", LENGTH + 1e-4 * np.cos(np.arange(LENGTH.size))),
        ("log of a permutation", np.log(RNG.permutation(LENGTH))),
        ("split", None),
    ],
)
def test_leak_patterns_are_refused(name, mean):
    kind = _leaky(_split_mean() if mean is None else mean)
    assert kind == "data_leak", name


def _prior_lppd_refusal(model: pm.Model, env) -> str:
    observed = {key: np.asarray(env.data[key]) for key in env.observed}
    rebuilt = rebuild_model(json.loads(json.dumps(describe_model(model, observed))), observed)
    try:
        leaks.check_leaks(rebuilt, observed, env.reference_elpd, seed=0)
    except Failure as failure:
        return failure.kind
    return "ok"


def test_prior_predictive_rule_refuses_an_encoding_the_patterns_miss():
    """Each value nudged by 2% of the spread: no pattern matches, the prior knows the data."""
    nudged = LENGTH + 0.02 * np.std(LENGTH) * np.sign(np.sin(np.arange(LENGTH.size) + 0.5))
    with pm.Model() as model:
        s = pm.HalfNormal("s", 0.05)
        pm.Normal("length", pt.as_tensor(nudged), s, observed=LENGTH)
    assert _leaky(nudged) == "ok"  # beyond the patterns
    assert _prior_lppd_refusal(model, DUGONGS) == "data_leak"


def test_honest_near_fit_with_a_fixed_rate_passes():
    """death_process with its rate fixed at the maximum-likelihood value: no prior draws,
    correlated with the data, still honest."""
    env = get_env("death_process")
    time, population, infected = (
        np.asarray(env.data[k]) for k in ("time", "population", "infected")
    )

    def loss(theta: float) -> float:
        return -binom.logpmf(infected, population, 1 - np.exp(-theta * time)).sum()

    theta = minimize_scalar(loss, bounds=(1e-3, 5), method="bounded").x
    with pm.Model() as model:
        rate = pm.HalfNormal("rate", 1.0)
        p = 1.0 - pm.math.exp(-(theta + 0 * rate) * time)
        pm.Binomial("infected", n=population, p=p, observed=infected)
    assert _prior_lppd_refusal(model, env) == "ok"


@pytest.mark.parametrize("name", ["survival_analysis", "irt", "death_process", "dugongs"])
def test_references_pass_the_leak_checks(name):
    """survival_analysis's and irt's priors come closest to their reference ELPDs of all
    256 shipped programs (the README has the full check, run by hand)."""
    env = get_env(name)
    observed = {key: np.asarray(env.data[key]) for key in env.observed}
    described = describe_source(env.reference_program, env.data, tuple(env.observed))
    model = rebuild_model(described["description"], observed)
    check_contract(model, observed)
    leaks.check_leaks(model, observed, env.reference_elpd, seed=0)


# -- through a worker -----------------------------------------------------------------------

# LOO refits off: these tests are about containment and the pool, not LOO (test_judge_loo.py).
CFG = JudgeConfig(
    name="redteam", draws=100, tune=100, chains=2, timeout_s=150, memory_mb=3072, loo_refits=0
)
FRAME = "def climb():\n    yield walker.gi_frame.f_back\nwalker = climb()\nframe = next(walker)\n"
TAMPERING = (
    HONEST
    + (
        # every Normal's logp gains 5 in this process
        "class Boosted(pm.Normal):\n"
        "    def logp(value, mu, sigma):\n"
        "        return pm.logp(pm.Normal.dist(mu, sigma), value) + 5\n"
        # LOO on the negative-log scale
        "pm.backends.arviz.rcParams['stats.ic_scale'] = 'negative_log'\n"
        # the frame escape: the runner's globals, summarise_fit replaced
        + FRAME
        + "while 'summarise_fit' not in frame.f_globals:\n"
        "    frame = frame.f_back\n"
        "frame.f_globals['summarise_fit'] = lambda *args: {'elpd_loo': 1e6}\n"
        "frame.f_globals['_SAMPLE'] = lambda *args, **kwargs: None\n"
    )
)
FORGING = (
    FRAME + "while frame.f_code.co_name != '_child':\n"
    "    frame = frame.f_back\n"
    "fd = frame.f_locals['result_fd']\n"
    "frame.f_globals['os'].write(fd, b'{\"ok\": true, \"elpd_loo\": 1000000.0}')\n"
    "frame.f_globals['os']._exit(0)\n"
)
KILLING = FRAME + (
    "while frame.f_code.co_name != '_child':\n"
    "    frame = frame.f_back\n"
    "os = frame.f_globals['os']\n"
    "for pid in range(1, 200):\n"
    "    try:\n"
    "        os.kill(pid, 9)\n"
    "    except Exception:\n"
    "        pass\n"
)

PLANTING = FRAME + (
    "while frame.f_code.co_name != '_child':\n"
    "    frame = frame.f_back\n"
    "os = frame.f_globals['os']\n"
    "folder = os.environ['PYTENSOR_FLAGS'].partition('base_compiledir=')[2]\n"
    "fd = os.open(folder + '/planted.pkl', os.O_CREAT | os.O_WRONLY)\n"
    "os.write(fd, b'poison')\n"
)


@pytest.mark.skipif(not bwrap_works(), reason="bubblewrap cannot run here")
def test_tampering_in_phase_one_does_not_reach_the_score():
    """Global patches, a frame escape and a forged verdict stay in the program's child;
    the honest program scores the same before and after on the same worker."""
    with SandboxedWorker(CFG) as worker:
        before = worker.score(HONEST, DUGONGS)
        assert before.ok, before
        tampered = worker.score(TAMPERING, DUGONGS)
        assert tampered.ok and tampered.elpd_loo == before.elpd_loo, tampered
        forged = worker.score(FORGING, DUGONGS)
        assert forged.error_kind == "crashed" and "malformed" in forged.message, forged
        odd_kind = FORGING.replace('"ok": true', '"ok": false, "error_kind": [1]')
        odd = worker.score(odd_kind, DUGONGS)
        assert odd.error_kind == "crashed" and "malformed" in odd.message, odd
        custom = "import pymc as pm\nwith pm.Model() as model:\n    a = pm.Normal('a', 2, 1)\n"
        custom += (
            "    pm.CustomDist('length', a, logp=lambda v, m: 0 * v, observed=data['length'])\n"
        )
        refused = worker.score(custom, DUGONGS)
        assert refused.error_kind == "forbidden_model", refused
        killing = worker.score(KILLING, DUGONGS)  # no pid it can name is the worker's
        assert killing.error_kind == "no_model", killing
        planted = worker.score(PLANTING, DUGONGS)  # into its own tmpfs, gone with it
        assert planted.error_kind == "no_model", planted
        assert not (worker._work_dir / "pytensor" / "planted.pkl").exists()
        after = worker.score(HONEST, DUGONGS)
        assert after.ok and after.elpd_loo == before.elpd_loo, after
