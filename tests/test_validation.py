"""The validation job (policy=slot) through the CLI: it learns towards p*, beats nothing it
should not, and writes every promised artefact; its recipe and baseline on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from synthstats.cli import train
from synthstats.config import resolve
from synthstats.envs.spaces import get_space
from synthstats.eval.baseline import PolicyGradient
from synthstats.eval.lm_exact import slot_numbers
from synthstats.eval.recipe import SLOT_LOG_Z_LR, SLOT_STEPS, apply_slot_recipe

STEPS = 120
# After STEPS steps of 8 (seed 0) the GFlowNet's TV to p* must have fallen by this much
# from step 0 (0.72 on dugongs, whose space now holds failure programs too).
TV_MARGIN = 0.3
REPORT_FIELDS = (
    *("env", "programs", "reward_temperature", "tv_initial", "tv", "kl", "jsd"),
    *("logz_error", "spearman", "modes_covered", "baseline_tv", "steps", "seconds"),
    *("failure_programs", "p_valid_initial", "p_valid", "failure_mass", "baseline_p_valid"),
)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("validation") / "run"
    arguments = ["env=dugongs", "seed=0", f"runner.train.steps={STEPS}", f"output_dir={run_dir}"]
    result = CliRunner().invoke(train, [*arguments, "--no-progress"])
    assert result.exit_code == 0, result.output
    return run_dir, result.output


def test_no_arguments_select_the_slot_validation_on_dugongs():
    config = resolve([])
    assert (config.policy.kind, config.env.name) == ("slot", "dugongs")


def test_short_run_moves_towards_the_target(short_run):
    run_dir, _ = short_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"] == STEPS
    assert report["tv"] <= report["tv_initial"] - TV_MARGIN
    assert report["mass_in_space"] == pytest.approx(1.0, abs=1e-5)
    # the policy starts near uniform over each program's 5 forms (4 failure edits) and the
    # failure term drives failure mass down
    assert report["failure_programs"] == 4 * len(get_space("dugongs"))
    assert report["p_valid_initial"] < 0.3 and report["p_valid"] > 0.6


def test_the_lm_job_reads_the_slot_numbers_it_puts_beside_its_own(short_run):
    run_dir, _ = short_run
    report = json.loads((run_dir / "report.json").read_text())
    numbers = slot_numbers(report)
    assert numbers["env"] == "dugongs" and numbers["steps"] == STEPS
    assert (numbers["tv"], numbers["p_valid"]) == (report["tv"], report["p_valid"])


def test_report_has_every_field(short_run):
    run_dir, _ = short_run
    report = json.loads((run_dir / "report.json").read_text())
    missing = [field for field in REPORT_FIELDS if field not in report]
    assert not missing
    assert report["env"] == "dugongs"
    assert report["programs"] == len(get_space("dugongs"))
    assert report["reward_temperature"] == get_space("dugongs").reward_temperature
    assert len(report["per_program"]) == report["programs"]
    for field in ("tv_initial", "tv", "kl", "jsd", "logz_error", "baseline_tv", "seconds"):
        assert isinstance(report[field], float) and report[field] >= 0


def test_run_directory_holds_plots_metrics_and_both_policies(short_run):
    run_dir, output = short_run
    for plot in ("programs.png", "curves.png"):
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for directory in (run_dir, run_dir / "baseline"):
        rows = [
            json.loads(line) for line in (directory / "evaluation.jsonl").read_text().splitlines()
        ]
        assert rows[0]["step"] == 0 and rows[-1]["step"] == STEPS
        assert len((directory / "metrics.jsonl").read_text().splitlines()) == STEPS
    lines = ("TV at step 0", f"TV at step {STEPS}", f"p(valid) at step {STEPS}", "log Z error")
    for line in (*lines, "modes covered"):
        assert line in output
    assert "reward maximiser" in output


def test_recipe_fills_shipped_defaults_and_keeps_explicit_settings():
    space = get_space("peregrines")
    config, filled = apply_slot_recipe(resolve(["env=peregrines", "policy=slot"]), space)
    assert config.runner.train.steps == SLOT_STEPS
    assert config.objective.log_z_lr == SLOT_LOG_Z_LR
    assert config.objective.reward.temperature == space.reward_temperature != 1.0
    assert filled["objective.reward.temperature"] == space.reward_temperature
    explicit = resolve(
        ["env=peregrines", "runner.train.steps=300", "objective.reward.temperature=2.0"]
    )
    config, filled = apply_slot_recipe(explicit, space)
    assert config.runner.train.steps == 300
    assert config.objective.reward.temperature == 2.0
    assert "runner.train.steps" not in filled and "objective.reward.temperature" not in filled


def test_policy_gradient_pushes_up_above_mean_rewards_only():
    log_pf = torch.zeros(3, 2, requires_grad=True)
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    log_reward = torch.tensor([3.0, 2.0, 1.0]).log()  # advantages 1, 0, -1
    PolicyGradient()(log_pf, mask, None, log_reward=log_reward, log_z=torch.zeros(3)).backward()
    # loss = -mean(advantage * sum of unmasked log_pf)
    expected = torch.tensor([[-1 / 3, -1 / 3], [0.0, 0.0], [1 / 3, 0.0]])
    assert torch.allclose(log_pf.grad, expected)


@pytest.mark.parametrize(
    "override",
    ["objective.reward.final_temperature=0.5", "objective.log_z=vargrad", "resume=RUN"],
)
def test_unsupported_settings_stop_before_training(tmp_path, override):
    run_dir = tmp_path / "run"
    if override == "resume=RUN":
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("policy:\n  kind: slot\n")
        (run_dir / "checkpoints" / "step-000001").mkdir(parents=True)
        (run_dir / "checkpoints" / "latest").write_text("step-000001")
        override = f"resume={run_dir}"
    result = CliRunner().invoke(train, [override, f"output_dir={run_dir}", "--no-progress"])
    assert result.exit_code == 2
    assert "policy=slot does not support" in result.output
    assert not (run_dir / "report.json").exists()


def test_an_env_without_a_program_space_names_the_alternatives(tmp_path):
    result = CliRunner().invoke(train, ["env=irt", f"output_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2
    assert (
        "no enumerable program space" in result.output and "policy=hf_qwen3_0_6b" in result.output
    )
