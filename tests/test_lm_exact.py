"""The exact check on the language-model path, short: a tiny Qwen3 over the real tokenizer,
trained in full through the local backend and the loop on a small space with four failure
programs; the GFlowNet phase must bring p_theta(. | valid) closer to p* and failure mass
lower than the supervised phase left them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from synthstats.backends.mock_model import MOCK_ARCHITECTURE
from synthstats.envs import get_env
from synthstats.envs.spaces import get_space
from synthstats.envs.spaces.failures import failure_programs
from synthstats.envs.spaces.grammar import Choice, ProgramSpace, Slot
from synthstats.eval.lm_exact import build_target, run_lm_exact, space_target
from synthstats.judge.score import Score

# Short programs (12 tokens in canonical form): on the shared 2-core CPU one step of the
# tiny model costs about a second, most of it the head over Qwen3's 151k tokens. Rewards
# are given, not judged, so the programs need not be PyMC.
SMALL = ProgramSpace(
    env_name="dugongs",
    observed="length",
    template="a = <<a>>\nb = <<b>>\n",
    slots=(
        Slot("a", (Choice("one", "1"), Choice("two", "2"), Choice("three", "3"))),
        Slot("b", (Choice("four", "4"), Choice("five", "5"))),
    ),
    reward_temperature=1.0,
)
# log R of each program (T = 1, reference 0): p* is far from uniform.
LOG_R = (-3.0, -2.5, 0.0, -1.0, -2.0, -0.5)


def small_target():
    log_reward = dict(zip(SMALL.completions, LOG_R, strict=True))
    scores = {text: Score(ok=True, elpd_loo=value) for text, value in log_reward.items()}
    return build_target(log_reward, scores, failure_programs(SMALL))


def test_every_shipped_space_has_four_failure_programs_the_gate_refuses():
    for env in ("dugongs", "eight_schools", "surgical", "peregrines"):
        target = space_target(get_space(env))
        assert len(target.failures) >= 4 and len(target.log_reward) >= 12
        assert all(not score.ok for score in target.failures.values())


def test_gflownet_phase_lowers_tv_and_failure_mass_left_by_the_supervised_phase(tmp_path):
    env = dataclasses.replace(get_env("dugongs"), reference_elpd=0.0)
    report = run_lm_exact(
        tmp_path,
        env,
        small_target(),
        steps=12,
        sft_steps=40,
        architecture=MOCK_ARCHITECTURE,
        batch_size=10,
        show_progress=False,
        evaluations=2,
    )
    before, after = report["after_supervised"], report["after_gflownet"]
    print(json.dumps(report, indent=1))
    assert before["tv"] >= 0.2
    assert after["tv"] < before["tv"]
    failures_before = 1 - before["p_valid"]
    assert 1 - after["p_valid"] < failures_before
    assert json.loads((tmp_path / "report.json").read_text())["after_gflownet"] == after
    rows = [json.loads(line) for line in (tmp_path / "evaluation.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 6, 12] and rows[-1]["tv"] == after["tv"]
    assert len(report["per_program"]) == len(LOG_R)
    assert sum(row["after_gflownet"] for row in report["per_program"]) == pytest.approx(1.0)
    for plot in ("programs.png", "curves.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
