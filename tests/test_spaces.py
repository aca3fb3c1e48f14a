"""Program spaces: every program keeps the env contract, the shipped judge scores match the
programs, and each env's reward temperature makes the exact target hard."""

import ast
import json
import time

import numpy as np
import pytest

from synthstats.backends.canonical import FENCE_CLOSE, FENCE_OPEN, canonical_completion
from synthstats.config import resolve
from synthstats.envs import get_env
from synthstats.envs.spaces import SPACES, Choice, ProgramSpace, Slot, get_space
from synthstats.envs.spaces.failures import FAILURE_EDITS, every_failure_program
from synthstats.eval.metrics import target_probabilities, total_variation
from synthstats.eval.target import (
    MAX_TOP_PROBABILITY,
    MIN_TV_FROM_UNIFORM,
    choose_temperature,
    hardness,
    space_log_rewards,
    space_reference_elpd,
)
from synthstats.judge.extract import extract_program
from synthstats.judge.gate import check_program
from synthstats.judge.shipped import ShippedScoresJudge
from synthstats.judge.space_scores import (
    load_scores,
    score_programs,
    scores_path,
)

ENVS = ("dugongs", "eight_schools", "surgical", "peregrines")


def test_the_four_envs_have_30_to_60_distinct_programs():
    assert set(SPACES) == set(ENVS)
    for name in ENVS:
        space = get_space(name)
        assert 30 <= len(space) <= 60
        assert len(set(space.completions)) == len(space)
        for path in space.paths():
            assert space.path_of(space.completion(path)) == path
    with pytest.raises(ValueError, match="no enumerable program space"):
        get_space("irt")


def _data_reads(tree: ast.AST) -> list[str]:
    return [
        node.slice.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "data"
    ]


def _binds_model(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.withitem)
        and isinstance(node.optional_vars, ast.Name)
        and node.optional_vars.id == "model"
        and ast.unparse(node.context_expr) == "pm.Model()"
        for node in ast.walk(tree)
    )


def _likelihood_names(tree: ast.AST, observed: str) -> list[str]:
    """First arguments of the calls that pass observed=data[observed]."""
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and any(
            keyword.arg == "observed" and ast.unparse(keyword.value) == f"data['{observed}']"
            for keyword in node.keywords
        )
    ]


@pytest.mark.parametrize("name", ENVS)
def test_every_program_keeps_the_contract_on_its_face(name):
    space = get_space(name)
    env = get_env(name)
    assert env.observed == (space.observed,)
    for completion in space.completions:
        source = extract_program(completion)
        assert source is not None
        assert check_program(source) is None  # parses, allowed imports, nothing forbidden
        tree = ast.parse(source)
        assert _binds_model(tree)
        assert _likelihood_names(tree, space.observed) == [space.observed]
        reads = _data_reads(tree)
        assert reads.count(space.observed) == 1  # the observed array is used nowhere else
        assert set(reads) <= set(env.data)
        assert "pm.sample" not in source


def test_grammar_fills_blocks_inline_and_nested_placeholders():
    space = ProgramSpace(
        env_name="toy",
        observed="y",
        template="with pm.Model() as model:\n    <<prior>>\n    x = <<scale>>\n",
        slots=(
            Slot("prior", (Choice("a", "a = 1\nb = <<scale>>"), Choice("none", ""))),
            Slot("scale", (Choice("one", "1.0"), Choice("two", "2.0"))),
        ),
        reward_temperature=1.0,
    )
    assert len(space) == 4
    assert (
        space.render((0, 1)) == "with pm.Model() as model:\n    a = 1\n    b = 2.0\n    x = 2.0\n"
    )
    assert space.render((1, 0)) == "with pm.Model() as model:\n    x = 1.0\n"
    assert space.labels((0, 1)) == {"prior": "a", "scale": "two"}
    assert space.completion((1, 0)).startswith("```python\n") and space.completion((1, 0)).endswith(
        "```"
    )
    with pytest.raises(ValueError, match="do not match slots"):
        ProgramSpace("toy", "y", "<<missing>>", space.slots, 1.0)
    with pytest.raises(KeyError, match="not a program"):
        space.path_of("```python\nx = 3\n```")


@pytest.mark.parametrize("name", ENVS)
def test_shipped_scores_cover_the_space_and_record_the_default_judge(name):
    space = get_space(name)
    scores = load_scores(space)
    default_judge = resolve(["judge=default"]).judge
    assert scores.judge_budget == default_judge.budget()
    assert scores.data_hash == get_env(name).data_hash()
    assert set(scores.versions) >= {"pymc", "arviz"}
    assert scores.ok.all() and np.isfinite(scores.elpd).all()


def test_load_scores_refuses_a_file_from_other_programs(tmp_path):
    space = get_space("dugongs")
    stored = json.loads(scores_path("dugongs").read_text())
    stored["programs"][3]["digest"] = "0" * 16
    stale = tmp_path / "dugongs.json"
    stale.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="re-score"):
        load_scores(space, stale)


@pytest.mark.parametrize("name", ENVS)
def test_reward_temperature_makes_the_target_hard(name):
    space = get_space(name)
    elpd = load_scores(space).elpd
    target = hardness(elpd, space.reward_temperature)
    print(
        f"{name}: {len(space)} programs, T={space.reward_temperature}, "
        f"max p*={target.max_probability:.3f}, TV(uniform, p*)={target.tv_from_uniform:.3f}"
    )
    assert target.max_probability < MAX_TOP_PROBABILITY
    assert target.tv_from_uniform >= MIN_TV_FROM_UNIFORM
    assert choose_temperature(elpd) == space.reward_temperature
    # through the shared reward transform, referenced to the best program: the clamp does
    # not move p* (the worst programs' log R stays above the clamp, or nearly so)
    scores = load_scores(space)
    log_reward = space_log_rewards(space, scores, reference_elpd=space_reference_elpd(scores))
    exact = target_probabilities(np.array([log_reward[text] for text in space.completions]))
    assert total_variation(exact, target_probabilities(elpd / space.reward_temperature)) < 1e-6


@pytest.mark.slow
def test_rescoring_a_sample_with_the_real_judge_matches_the_shipped_elpds():
    """The shipped ELPDs are reproducible: re-score the three quickest dugongs programs."""
    space = get_space("dugongs")
    shipped = load_scores(space)
    quickest = np.argsort(shipped.seconds)[:3]
    paths = [space.paths()[index] for index in quickest]
    start = time.perf_counter()
    fresh = score_programs(
        space, get_env("dugongs"), resolve(["judge=default"]).judge, paths, progress=print
    )
    print(f"re-scored {len(paths)} programs in {time.perf_counter() - start:.0f} s")
    for index, score in zip(quickest, fresh, strict=True):
        assert score.ok, score.message
        tolerance = 4 * np.hypot(score.mcse_elpd, shipped.mcse[index]) + 1e-6
        assert abs(score.elpd_loo - shipped.elpd[index]) <= tolerance


def test_shipped_scores_judge_returns_the_stored_scores_for_the_spaces_env():
    space = get_space("dugongs")
    judge = ShippedScoresJudge(space)
    env = get_env("dugongs")
    picked = [space.completions[5], space.completions[0], space.completions[5]]
    scores = judge.score_async(env, picked).result()
    shipped = load_scores(space)
    assert [score.elpd_loo for score in scores] == [
        shipped.elpd[5],
        shipped.elpd[0],
        shipped.elpd[5],
    ]
    assert all(score.ok and score.cached for score in scores)
    with pytest.raises(ValueError, match="not in the dugongs space"):
        judge.score(env, ["```python\nimport pymc as pm\n```"])
    with pytest.raises(ValueError, match="other data"):
        judge.score(get_env("eight_schools"), picked)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_failure_edit_of_every_program_is_refused_by_the_gate(name):
    """The slot job's failure programs need no shipped score: the gate refuses each."""
    space = get_space(name)
    failures = every_failure_program(space)
    assert len(failures) == len(FAILURE_EDITS) * len(space) == len(set(failures))
    assert not set(failures) & set(space.completions)
    for text in failures:  # canonical, as the loop requires of every paid or failed completion
        assert canonical_completion(text[len(FENCE_OPEN) : -len(FENCE_CLOSE)], "off") == text
    scores = ShippedScoresJudge(space, failures).score(get_env(name), failures)
    assert {score.error_kind for score in scores} == {"forbidden", "syntax"}
    with pytest.raises(ValueError, match="passes the judge's gate"):
        ShippedScoresJudge(space, [space.completions[0]])
