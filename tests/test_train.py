"""The training loop end to end: real judge, tiny real Qwen3 + LoRA, checkpoints and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForCausalLM

from synthstats.backends.mock_model import mock_model_folder
from synthstats.cli import train
from synthstats.envs import get_env
from synthstats.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow


def reference_demonstration(tmp_path: Path) -> Path:
    """A demonstration file holding the env's reference program: a valid score in replay."""
    env = get_env("dugongs")
    path = tmp_path / "reference.jsonl"
    completion = f"```python\n{env.reference_program.strip()}\n```"
    path.write_text(json.dumps({"prompt": "dugongs", "completion": completion}) + "\n")
    return path


def train_arguments(run_dir: Path, demonstrations: Path, cache: Path, steps: int) -> list[str]:
    return [
        "runner=local",
        "policy=mock",
        "env=dugongs",
        "judge=fast",
        f"runner.train.steps={steps}",
        "runner.train.batch_size=4",
        "runner.train.checkpoint_every=2",
        "policy.max_new_tokens=128",
        "policy.lora_dropout=0.0",
        "judge.workers=1",
        "judge.cache=true",
        f"judge.cache_path={cache}",
        f"output_dir={run_dir}",
        "sft_warmstart.enabled=true",
        f"sft_warmstart.data_path={demonstrations}",
        "sft_warmstart.compute_rewards=true",
        "--no-progress",
    ]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trained_state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    state = torch.load(checkpoint / "policy" / "policy_state.pt", weights_only=False)
    tensors = _tensors(state)
    adapter = checkpoint / "policy" / "adapter"
    from safetensors.torch import load_file

    tensors.update(load_file(str(adapter / "adapter_model.safetensors")))
    return tensors


def _tensors(tree, prefix="") -> dict[str, torch.Tensor]:
    """Every tensor in a nested state, keyed by its path (log_z.table, optimizer.state.0...)."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        children = tree.items()
    elif isinstance(tree, list | tuple):
        children = enumerate(tree)
    else:
        return {}
    found = {}
    for key, value in children:
        found.update(_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, reference_demonstration(root), root / "scores.sqlite"


@pytest.fixture(scope="module")
def straight_run(workspace):
    root, demonstrations, cache = workspace
    run_dir = root / "straight"
    result = CliRunner().invoke(train, train_arguments(run_dir, demonstrations, cache, steps=4))
    assert result.exit_code == 0, result.output
    return run_dir


def test_cli_run_writes_metrics_and_a_loadable_checkpoint(straight_run):
    metrics = read_metrics(straight_run)
    assert [line["step"] for line in metrics] == [0, 1, 2, 3]
    for key in (
        "loss",
        "log_z",
        "reward_mean",
        "reward_max",
        "valid_rate",
        "unique_programs",
        "judge_seconds",
        "learner_seconds",
        "wait_seconds",
        "tokens_per_second",
    ):
        assert key in metrics[0], key
    # The reference program from the warm-start reached the loss with a valid score.
    assert all(line["batch_reward_max"] > -20.0 for line in metrics)
    assert all(line["replayed"] >= 1 for line in metrics)
    checkpoint = latest_checkpoint(straight_run)
    assert checkpoint.name == "step-000004"
    base = AutoModelForCausalLM.from_pretrained(mock_model_folder())
    PeftModel.from_pretrained(base, checkpoint / "policy" / "adapter")
    assert (straight_run / "config.yaml").is_file()


def test_training_changes_lora_weights_and_log_z(straight_run, workspace):
    root, demonstrations, cache = workspace
    untrained_dir = root / "untrained"
    result = CliRunner().invoke(
        train,
        train_arguments(untrained_dir, demonstrations, cache, steps=1)
        + ["runner.train.learning_rate=0.0", "objective.log_z_lr=0.0"],
    )
    assert result.exit_code == 0, result.output
    untrained = trained_state(untrained_dir)
    trained = trained_state(straight_run)
    lora_keys = [key for key in trained if "lora_" in key]
    assert lora_keys
    assert any(not torch.equal(trained[key], untrained[key]) for key in lora_keys)
    log_z = [key for key in trained if key.startswith("log_z.")]
    assert log_z and any(not torch.equal(trained[k], untrained[k]) for k in log_z)


def test_resume_is_bit_identical_to_a_straight_run(straight_run, workspace):
    root, demonstrations, cache = workspace
    run_dir = root / "halves"
    first = CliRunner().invoke(train, train_arguments(run_dir, demonstrations, cache, steps=2))
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(
        train, [f"resume={run_dir}", "runner.train.steps=4", "--no-progress"]
    )
    assert second.exit_code == 0, second.output
    assert [line["step"] for line in read_metrics(run_dir)] == [0, 1, 2, 3]
    straight, resumed = trained_state(straight_run), trained_state(run_dir)
    assert set(straight) == set(resumed)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    straight_losses = [line["loss"] for line in read_metrics(straight_run)]
    resumed_losses = [line["loss"] for line in read_metrics(run_dir)]
    assert straight_losses == resumed_losses


def test_a_finished_run_directory_is_not_overwritten(straight_run, workspace):
    root, demonstrations, cache = workspace
    result = CliRunner().invoke(
        train, train_arguments(straight_run, demonstrations, cache, steps=4)
    )
    assert result.exit_code != 0
    assert f"resume={straight_run}" in result.output


def test_sigterm_writes_a_checkpoint_before_exit(workspace):
    root, demonstrations, cache = workspace
    run_dir = root / "interrupted"
    arguments = train_arguments(run_dir, demonstrations, cache, steps=500)
    arguments = [a for a in arguments if not a.startswith("runner.train.checkpoint_every")]
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from synthstats.cli import train; train()",
            *arguments,
            "runner.train.checkpoint_every=1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "no step logged in time"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, output
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None, output
    steps_logged = len(read_metrics(run_dir))
    assert checkpoint.name == f"step-{steps_logged:06d}"
    assert steps_logged < 500


def test_wandb_offline_logs_the_run(workspace, monkeypatch):
    root, demonstrations, cache = workspace
    run_dir = root / "wandb-offline"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = CliRunner().invoke(
        train, train_arguments(run_dir, demonstrations, cache, steps=1) + ["logging=wandb"]
    )
    assert result.exit_code == 0, result.output
    assert len(read_metrics(run_dir)) == 1
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, list(run_dir.iterdir())


def test_wandb_without_login_fails_at_start_with_the_fix(workspace, monkeypatch, tmp_path):
    root, demonstrations, cache = workspace
    run_dir = root / "wandb-online"
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(
        train,
        train_arguments(run_dir, demonstrations, cache, steps=1)
        + ["logging=wandb", "logging.wandb_mode=online"],
    )
    assert result.exit_code == 2, result.output
    assert "logging=wandb could not start" in result.output
    assert "WANDB_MODE=offline" in result.output
    assert latest_checkpoint(run_dir) is None
