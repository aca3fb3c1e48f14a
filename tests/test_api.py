"""The Python API gives the command line's defaults: resolve, train, score, evaluate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import synthstats
from synthstats.config import ConfigError
from synthstats.envs import get_env


def test_resolve_config_counts_its_arguments_as_typed():
    config = synthstats.resolve_config("env=peregrines", "runner.train.steps=100")
    assert config.user_set == {"runner.train.steps"}


def test_run_training_checks_inputs_before_creating_anything(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        synthstats.run_training(
            "policy=mock",
            "sft_warmstart.enabled=true",
            "sft_warmstart.data_path=missing.jsonl",
            f"output_dir={tmp_path / 'run'}",
        )
    assert not (tmp_path / "run").exists()


def logged_to(run_dir: Path, run_id: str) -> bytes:
    """Everything W&B wrote offline for one run id. Each resume of the run gets a folder
    named by its start second; a second session started within the same second gets that
    name with a "-1" suffix."""
    folders = (run_dir / "wandb").glob(f"offline-run-*-{run_id}*")
    runs = sorted(path for path in folders if path.name.partition(run_id)[2] in ("", "-1", "-2"))
    assert runs, f"no offline W&B run {run_id} under {run_dir / 'wandb'}"
    return b"".join(path.read_bytes() for run in runs for path in run.glob("*.wandb"))


def test_run_training_runs_the_default_slot_job_and_keeps_the_final_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    config = synthstats.resolve_config(
        "runner.train.steps=6", f"output_dir={run_dir}", "logging=wandb"
    )
    summary = synthstats.run_training(config, show_progress=False)
    assert summary.finished and summary.exit_code == 0 and summary.run_dir == run_dir
    state = torch.load(run_dir / "final" / "slot_policy.pt", weights_only=True)
    assert "module" in state
    assert (run_dir / "report.json").is_file()
    # The validation report and plots reach the same W&B run as the training metrics.
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    logged = logged_to(run_dir, run_id)
    for key in (b"logz_error", b"baseline_tv", b"curves", b"programs"):
        assert key in logged, key
    # `synthstats eval` adds its report to the same W&B run.
    report = synthstats.evaluate(run_dir)
    assert report["env"] == "dugongs"
    deadline = time.monotonic() + 30  # W&B's service may still be writing the file
    while b"eval/exact/tv" not in (logged := logged_to(run_dir, run_id)):
        assert time.monotonic() < deadline, logged[-300:]
        time.sleep(0.5)
    assert b"eval/reward_temperature" in logged


@pytest.mark.slow
def test_score_program_reads_a_bare_program_as_the_cli_does():
    program = get_env("dugongs").reference_program
    bare, fenced = synthstats.score_programs(
        [program, f"Here it is.\n```python\n{program}\n```\n"], "dugongs", judge="fast"
    )
    assert bare.ok and fenced.ok
    assert bare.elpd_loo == pytest.approx(fenced.elpd_loo)
    assert synthstats.score_program(program, "dugongs", judge="fast").elpd_loo == bare.elpd_loo
