"""`synthstats bench train`: training throughput of the real loop, bare or under a launcher.

    synthstats bench train --policy mock --json
    synthstats bench train --policy hf_qwen3_0_6b --random-init policy.max_new_tokens=256
    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml \\
        $(which synthstats) bench train --policy hf_qwen3_4b --random-init

Runs `synthstats-train`'s own loop (env dugongs, judge=fast) for a fixed number of steps
in a temporary run directory and reports, over the steps after the first (warm-up):
steps per second, sampled tokens per second, learned tokens per second, and the share of
the loop's time the learner spent waiting for the judge. The loop's time is the sum of its
sequential phases (waiting for the judge, sampling, learning); start-up and the final
checkpoint are left out. `--random-init` builds the policy's published architecture with
random weights (no download). A random policy writes no programs, so the judge has
nothing to score and the waiting share shows only the loop's own overhead. A benchmark,
not a timed test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from synthstats.backends.mock_model import cached_model_folder

# Published architectures (the models' config.json on the Hugging Face hub).
PUBLISHED_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-0.6B": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1_000_000,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
    },
    "Qwen/Qwen3-4B": {
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1_000_000,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
    },
}
RANDOM_INIT_SEED = 0


@click.command("train", context_settings={"show_default": True})
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--policy", "policy_name", default="mock", help="A configs/policy/ option.")
@click.option(
    "--random-init",
    is_flag=True,
    help="Random weights in the policy's published architecture (hf policies; no download).",
)
@click.option("--steps", type=click.IntRange(min=2), default=6, help="Steps, the first a warm-up.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Global batch size.")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the run here (multi-node: a shared filesystem) [default: a temporary folder].",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the numbers.")
def bench_train(
    overrides: tuple[str, ...],
    policy_name: str,
    random_init: bool,
    steps: int,
    batch_size: int,
    output_dir: str | None,
    as_json: bool,
) -> None:
    """Steps/s, sampling and learning tokens/s, and the learner's wait for the judge."""
    from synthstats.config import ConfigError, resolve

    arguments = [
        "runner=local",
        f"policy={policy_name}",
        "judge=fast",
        f"runner.train.steps={steps}",
        f"runner.train.batch_size={batch_size}",
        f"runner.train.checkpoint_every={steps}",
        *overrides,
    ]
    try:
        config = resolve(arguments)
        if config.logging.backend == "console":
            raise ConfigError(
                "synthstats bench train reads the run's metrics.jsonl, which logging=console "
                "does not write: use logging=jsonl (the default) or logging=wandb"
            )
        if random_init:
            config.policy.model_name = str(random_init_folder(config.policy))
    except (ConfigError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    from synthstats.train.run import run

    run_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="bench-train-"))
    config.output_dir = str(run_dir / "run")
    main = int(os.environ.get("RANK", "0")) == 0
    try:
        summary = run(config, show_progress=False)
        result = summarise(read_metrics(summary.run_dir / "metrics.jsonl")) if main else {}
    finally:
        if output_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    if not main:
        return
    result.update(
        policy=policy_name,
        model=config.policy.model_name,
        random_init=random_init,
        processes=int(os.environ.get("WORLD_SIZE", "1")),
        device=_device_name(),
        batch_size=batch_size,
        max_new_tokens=config.policy.max_new_tokens,
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['policy']} ({'random init, ' if random_init else ''}{result['processes']} "
        f"process(es), {result['device']}), batch {batch_size}, {result['steps']} timed steps:\n"
        f"  steps/s:          {result['steps_per_second']:.3f}\n"
        f"  sample tokens/s:  {result['sample_tokens_per_second']:.1f}\n"
        f"  learn tokens/s:   {result['learn_tokens_per_second']:.1f}\n"
        f"  judge wait share: {result['judge_wait_share']:.1%}"
    )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def summarise(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput over the steps after the first, from the loop's per-step metrics."""
    timed = metrics[1:]
    waited = sum(m["wait_seconds"] for m in timed)
    sampling = sum(m["sample_seconds"] for m in timed)
    learning = sum(m["learner_seconds"] for m in timed)
    loop_seconds = waited + sampling + learning
    sampled_tokens = sum(m["tokens_per_second"] * m["sample_seconds"] for m in timed)
    return {
        "steps": len(timed),
        "steps_per_second": len(timed) / loop_seconds,
        "sample_tokens_per_second": sampled_tokens / sampling,
        "learn_tokens_per_second": sum(m["tokens"] for m in timed) / learning,
        "judge_wait_share": waited / loop_seconds,
        "loop_seconds": loop_seconds,
    }


def random_init_folder(policy) -> Path:
    """A folder holding the policy's architecture with seeded random weights (bfloat16)
    and the Qwen3 tokenizer, written once per machine and atomically (ranks may race)."""
    architecture = PUBLISHED_ARCHITECTURES.get(policy.model_name)
    if policy.kind != "hf" or architecture is None:
        raise ValueError(
            f"--random-init knows the architectures of {', '.join(PUBLISHED_ARCHITECTURES)} "
            f"(policy.kind hf); got policy.kind={policy.kind} model_name={policy.model_name!r}"
        )
    return cached_model_folder(
        "random-init",
        policy.model_name.split("/")[-1],
        [architecture, RANDOM_INIT_SEED],
        lambda folder: _write_random_model(folder, architecture),
    )


def _write_random_model(folder: Path, architecture: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    from synthstats.backends.mock_model import qwen3_tokenizer_folder

    tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_folder(), local_files_only=True)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = Qwen3Config(
        bos_token_id=None,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
        **architecture,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
