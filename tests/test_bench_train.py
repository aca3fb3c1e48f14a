"""`synthstats bench train`: the numbers it reports, and the random-init architectures."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoConfig, AutoModelForCausalLM

from synthstats.cli import main
from synthstats.config import PolicyConfig
from synthstats.train import bench


@pytest.mark.slow
def test_bench_train_reports_throughput_of_the_real_loop():
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "train",
            "--policy=mock",
            "--steps=3",
            "--batch-size=2",
            "--json",
            "policy.max_new_tokens=4",
            "judge.workers=1",
            "judge.cache=false",
        ],
    )
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["steps"] == 2  # the first step is a warm-up
    assert numbers["processes"] == 1 and numbers["device"] == "cpu"
    for key in ("steps_per_second", "sample_tokens_per_second", "learn_tokens_per_second"):
        assert numbers[key] > 0, key
    assert 0.0 <= numbers["judge_wait_share"] < 1.0


def test_console_logging_is_refused_before_anything_runs():
    result = CliRunner().invoke(main, ["bench", "train", "--policy=mock", "logging=console"])
    assert result.exit_code == 2
    assert "logging=jsonl" in result.output


def test_random_init_needs_a_published_hf_architecture():
    result = CliRunner().invoke(main, ["bench", "train", "--policy=mock", "--random-init"])
    assert result.exit_code == 2
    assert "Qwen/Qwen3-0.6B" in result.output


def test_random_init_writes_the_architecture_once(tmp_path, monkeypatch):
    tiny = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
    }
    monkeypatch.setitem(bench.PUBLISHED_ARCHITECTURES, "Qwen/Qwen3-Tiny", tiny)
    monkeypatch.setenv("SYNTHSTATS_CACHE", str(tmp_path))
    policy = PolicyConfig(kind="hf", model_name="Qwen/Qwen3-Tiny")
    folder = bench.random_init_folder(policy)
    config = AutoConfig.from_pretrained(folder)
    assert {key: getattr(config, key) for key in tiny} == tiny
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert bench.random_init_folder(policy) == folder  # written once, then reused
