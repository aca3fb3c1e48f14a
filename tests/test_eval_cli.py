"""`synthstats eval RUN_DIR` on a short mock run: the report's fields, its plots, its errors;
and the log p it reads for a latent-thinking policy."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from synthstats.backends import build_backend
from synthstats.cli import main, train
from synthstats.config import Config
from synthstats.envs import get_env
from synthstats.eval.evaluate import program_log_probs
from synthstats.eval.metrics import importance_log_partition
from synthstats.objectives import objective_log_reward

pytestmark = pytest.mark.slow

FIELDS = (
    "samples",
    "validity_rate",
    "error_kinds",
    "unique_programs",
    "reward_histogram",
    "best_elpd",
    "best_program",
    "spearman_logp_logr",
    "learned_log_z",
    "is_log_z",
    "is_log_z_se",
    "reward_temperature",
    "checkpoint",
)


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    env = get_env("dugongs")
    demonstrations = root / "reference.jsonl"
    completion = f"```python\n{env.reference_program.strip()}\n```"
    demonstrations.write_text(json.dumps({"prompt": "dugongs", "completion": completion}) + "\n")
    run_dir = root / "run"
    arguments = [
        "runner=local",
        "policy=mock",
        "env=dugongs",
        "judge=fast",
        "runner.train.steps=1",
        "runner.train.batch_size=2",
        # The reference demonstration is 123 tokens in canonical form.
        "policy.max_new_tokens=128",
        "judge.workers=1",
        "judge.cache=true",
        f"judge.cache_path={root / 'scores.sqlite'}",
        f"output_dir={run_dir}",
        "sft_warmstart.enabled=true",
        f"sft_warmstart.data_path={demonstrations}",
        "sft_warmstart.compute_rewards=true",
        "--no-progress",
    ]
    result = CliRunner().invoke(train, arguments)
    assert result.exit_code == 0, result.output
    return run_dir


def test_eval_json_report_is_complete_and_consistent(mock_run):
    result = CliRunner().invoke(main, ["eval", str(mock_run), "--samples", "4", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    written = json.loads((mock_run / "eval_report.json").read_text())
    assert printed == written
    for field in FIELDS:
        assert field in written, field
    assert written["samples"] == 4
    assert written["validity_rate"] == written["valid"] / written["samples"]
    failures = written["samples"] - written["valid"]
    assert sum(written["error_kinds"].values()) == failures
    assert sum(written["reward_histogram"]["counts"]) == written["samples"]
    assert (
        len(written["reward_histogram"]["edges"]) == len(written["reward_histogram"]["counts"]) + 1
    )
    assert written["unique_valid_programs"] <= written["unique_programs"] <= written["samples"]
    assert (written["best_elpd"] is None) == (written["valid"] == 0)
    assert Path(written["checkpoint"]).name == "step-000001"
    assert written["reward_temperature"] > 0
    # The local backend scores its samples, so the importance-sampling estimate exists.
    assert written["is_log_z"] is not None and math.isfinite(written["is_log_z"])
    assert written["learned_log_z"] is not None
    for plot in ("eval_reward_histogram.png", "eval_logp_vs_logr.png"):
        assert (mock_run / plot).stat().st_size > 0, plot


def test_eval_missing_checkpoint_is_a_clear_error(mock_run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((mock_run / "config.yaml").read_text())
    result = CliRunner().invoke(main, ["eval", str(bare)])
    assert result.exit_code != 0
    assert "no checkpoint" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a ClickException, not a crash

    result = CliRunner().invoke(main, ["eval", str(tmp_path / "absent")])
    assert result.exit_code != 0 and "not a directory" in result.output

    result = CliRunner().invoke(main, ["eval", str(mock_run), "--checkpoint", str(tmp_path)])
    assert result.exit_code != 0 and "no policy/ folder" in result.output


def test_importance_estimate_recovers_a_known_partition_from_random_samples():
    """Samples from a known q over 50 items with R known: log sum R within a few SEs."""
    rng = np.random.default_rng(0)
    log_reward = rng.normal(0.0, 1.0, size=50)
    q = rng.dirichlet(np.ones(50))
    drawn = rng.choice(50, size=4000, p=q)
    estimate, se = importance_log_partition(log_reward[drawn], np.log(q[drawn]))
    exact = math.log(np.exp(log_reward).sum())
    assert 0 < se < 0.2
    assert abs(estimate - exact) < 4 * se


def test_eval_of_a_slot_run_reports_the_validation_jobs_exact_metrics(tmp_path):
    run_dir = tmp_path / "slot"
    result = CliRunner().invoke(
        train, ["env=dugongs", "runner.train.steps=2", f"output_dir={run_dir}", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval_report.json").read_text())
    assert report["policy_kind"] == "slot" and report["step"] == 2
    last = json.loads((run_dir / "evaluation.jsonl").read_text().splitlines()[-1])
    assert last["policy"] == "gflownet" and last["step"] == 2
    for key in ("tv", "kl", "logz_error", "spearman", "p_valid"):
        assert report["exact"][key] == pytest.approx(last[key], abs=1e-6), key


def test_eval_log_p_of_a_latent_thinking_policy_is_what_training_matched_to_log_r():
    """thinking: latent trains log Z + log P_F(z, x) towards log R(x) + log p_ref(z | prompt),
    so eval's log p of a program is log P_F(z, x) - log p_ref(z): the policy's summed token
    log-probs (adapter on) less the think span's under the base model (adapter off)."""
    config = Config()
    config.policy.thinking = "latent"
    backend = build_backend(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: move it so the policy is not p_ref
        for name, param in backend.module.lm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    prompt = backend.render_prompt(get_env("dugongs").render_prompt())
    completions = [
        backend.tokenize_completion("<think>\nnormal\n</think>\n\nx = 1"),
        backend.tokenize_completion("<think>\n</think>\n\ny = 2"),
    ]
    log_reward = [-3.0, 1.5]
    think_end = backend.tokenizer.convert_tokens_to_ids("</think>")

    def summed(completion: list[int], *, adapter: bool, stop: int | None = None) -> float:
        with torch.no_grad(), contextlib.ExitStack() as stack:
            if not adapter:
                stack.enter_context(backend.module.lm.disable_adapter())
            logits = backend.module.lm(input_ids=torch.tensor([prompt + completion])).logits[0]
        steps = logits[len(prompt) - 1 : -1].float().log_softmax(-1)
        chosen = steps.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
        return float(chosen[:stop].sum())

    log_pf = [summed(ids, adapter=True) for ids in completions]
    think = [summed(ids, adapter=False, stop=ids.index(think_end) + 1) for ids in completions]
    assert all(value < -1.0 for value in think)
    latent = program_log_probs(backend, "latent", prompt, completions, log_reward)
    assert latent == pytest.approx([p - z for p, z in zip(log_pf, think, strict=True)], rel=1e-5)
    off = program_log_probs(backend, "off", prompt, completions, log_reward)
    assert off == pytest.approx(log_pf, rel=1e-5)

    # The learner's target, from the same function: its residual is eval's.
    target = objective_log_reward(
        backend,
        "latent",
        torch.tensor(log_reward, dtype=torch.float64),
        [prompt] * 2,
        completions,
    )
    residual = torch.tensor(log_pf, dtype=torch.float64) - target
    assert [p - r for p, r in zip(latent, log_reward, strict=True)] == pytest.approx(
        residual.tolist(), rel=1e-5
    )
