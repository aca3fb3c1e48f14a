"""The training loop end to end: real judge, tiny real Qwen3 + LoRA, checkpoints and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthstats.backends import build_backend
from synthstats.backends.mock_model import mock_model_folder
from synthstats.cli import train
from synthstats.config import resolve
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
    return policy_tensors(checkpoint / "policy")


def policy_tensors(policy: Path) -> dict[str, torch.Tensor]:
    state = torch.load(policy / "policy_state.pt", weights_only=False)
    tensors = _tensors(state)
    adapter = policy / "adapter"
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


def test_the_trained_adapter_is_kept_in_final_with_its_tokenizer(straight_run):
    final = straight_run / "final" / "adapter"
    base = AutoModelForCausalLM.from_pretrained(mock_model_folder())
    model = PeftModel.from_pretrained(base, final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer("x = 1")["input_ids"]
    from safetensors.torch import load_file

    last = latest_checkpoint(straight_run) / "policy" / "adapter" / "adapter_model.safetensors"
    kept, trained = load_file(str(final / "adapter_model.safetensors")), load_file(str(last))
    assert kept.keys() == trained.keys()
    assert all(torch.equal(kept[key], trained[key]) for key in kept)
    assert any("lora_" in name for name, _ in model.named_parameters())
    assert "runner" in (straight_run / "final" / "config.yaml").read_text()


def test_console_logging_prints_every_n_steps_and_keeps_n_checkpoints(workspace):
    root, demonstrations, cache = workspace
    run_dir = root / "console"
    arguments = train_arguments(run_dir, demonstrations, cache, steps=4)
    arguments = [a for a in arguments if not a.startswith("runner.train.checkpoint_every")]
    result = CliRunner().invoke(
        train,
        [
            *arguments,
            *("logging=console", "logging.every=2", "runner.train.checkpoint_every=1"),
            "runner.train.keep_checkpoints=1",
        ],
    )
    assert result.exit_code == 0, result.output
    steps_shown = re.findall(r"INFO synthstats.train: step (\d+) ", result.output)
    assert steps_shown == ["0", "2"]
    assert not (run_dir / "metrics.jsonl").exists()  # console: lines only
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step-000004"]
    assert (run_dir / "final" / "adapter" / "adapter_model.safetensors").is_file()
    for fragment in ("run directory", "1 process(es)", "env dugongs", "judge: 1 worker(s)"):
        assert fragment in result.output
    assert f"trained policy: {run_dir / 'final'}" in result.output


def test_training_changes_lora_weights_and_log_z(straight_run, workspace):
    root, demonstrations, cache = workspace
    arguments = train_arguments(root / "untrained", demonstrations, cache, steps=4)
    config = resolve([a for a in arguments if not a.startswith("--")])
    build_backend(config).save(root / "untrained" / "policy")  # the policy before any step
    untrained = policy_tensors(root / "untrained" / "policy")
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


@pytest.mark.parametrize(
    ("signal_number", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_sigterm_and_ctrl_c_write_a_checkpoint_before_exit(workspace, signal_number, exit_code):
    root, demonstrations, cache = workspace
    run_dir = root / f"interrupted-{signal_number}"
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
        process.send_signal(signal_number)
        output = process.communicate(timeout=120)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, output
    assert "Traceback" not in output
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None, output
    steps_logged = len(read_metrics(run_dir))
    assert checkpoint.name == f"step-{steps_logged:06d}"
    assert steps_logged < 500
    assert not (run_dir / "final").exists()  # only a finished run has a final policy


def wandb_offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_wandb_offline_keeps_one_run_id_across_resume_and_logs_programs(workspace, monkeypatch):
    root, demonstrations, cache = workspace
    run_dir = root / "wandb-offline"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_settings = [
        *("logging=wandb", "logging.programs_every=1", "logging.wandb_group=ablation"),
        *("logging.wandb_tags=[smoke,cpu]", "logging.wandb_log_model=true"),
    ]
    result = CliRunner().invoke(
        train, train_arguments(run_dir, demonstrations, cache, steps=1) + wandb_settings
    )
    assert result.exit_code == 0, result.output
    assert len(read_metrics(run_dir)) == 1
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    (first,) = wandb_offline_runs(run_dir)
    assert first.name.endswith(run_id)
    logged = (first / f"run-{run_id}.wandb").read_bytes()
    for expected in (b"programs", b"ablation", b"smoke", b"-final"):
        assert expected in logged, expected
    tables = list((first / "files" / "media" / "table").glob("programs_*.table.json"))
    assert tables
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["program", "ok", "error_kind", "elpd", "log_reward"]
    assert len(table["data"]) == 3  # the fresh samples of a batch of 4 with 1 replayed

    resumed = CliRunner().invoke(
        train, [f"resume={run_dir}", "runner.train.steps=2", "--no-progress"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id
    runs = wandb_offline_runs(run_dir)
    assert len(runs) == 2 and all(run.name.endswith(run_id) for run in runs)


def test_wandb_without_login_fails_at_start_and_leaves_no_run_dir(workspace, monkeypatch, tmp_path):
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
    assert result.exit_code == 1, result.output  # a failure while starting, not a usage error
    assert "logging=wandb could not start" in result.output
    assert "WANDB_MODE=offline" in result.output
    assert not run_dir.exists()
