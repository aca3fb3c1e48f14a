"""SFT warm-start: demonstrations become replay items with exactly the tokens a sample carries."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from synthstats.backends import build_backend
from synthstats.cli import train
from synthstats.config import Config, resolve
from synthstats.envs import get_env
from synthstats.judge.pool import JudgePool
from synthstats.replay import ReplayBuffer
from synthstats.train.checkpoint import latest_checkpoint, load_loop_state
from synthstats.train.sft import (
    DemonstrationError,
    read_demonstrations,
    resolve_data_path,
    strip_think,
    supervised_phase,
    warmstart_items,
)

PROGRAM = (
    "import pymc as pm\nwith pm.Model() as model:\n"
    '    mu = pm.Normal("mu", 2, 1)\n'
    '    sigma = pm.HalfNormal("sigma", 1)\n'
    '    pm.Normal("length", mu, sigma, observed=data["length"])\n'
)


def fenced(program: str = PROGRAM, think: str = "") -> str:
    prefix = f"<think>{think}</think>\n\n" if think else ""
    return f"{prefix}```python\n{program}```"


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def backend():
    config = Config()
    config.policy.max_new_tokens = 8
    return build_backend(config)


def sft_config(path: Path, *overrides: str) -> Config:
    return resolve(
        [
            "env=dugongs",
            "sft_warmstart.enabled=true",
            f"sft_warmstart.data_path={path}",
            "sft_warmstart.show_progress=false",
            *overrides,
        ]
    )


def test_demonstration_tokens_equal_a_sampled_trajectory(backend):
    """The chat template of prompt + assistant turn is the prompt ids, then exactly the
    completion ids the backend stores (stop token included): replay re-scores those."""
    messages = get_env("dugongs").render_prompt()
    completion = fenced()
    prompt_ids = backend.render_prompt(messages)
    completion_ids = backend.tokenize_completion(completion)
    full = backend.tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": completion}],
        tokenize=True,
        enable_thinking=False,
    )
    full = full["input_ids"] if not isinstance(full, list) else full
    assert full[: len(prompt_ids)] == prompt_ids
    assert full[len(prompt_ids) : len(prompt_ids) + len(completion_ids)] == completion_ids
    assert completion_ids[-1] == backend.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_lines_use_their_elpd_or_the_default(tmp_path, backend):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {"prompt": "p", "completion": fenced(), "elpd": 12.5},
            {"prompt": [{"role": "user", "content": "p"}], "completion": fenced(PROGRAM + "\n")},
        ],
    )
    config = sft_config(path, "sft_warmstart.default_elpd=3.0", "sft_warmstart.dedupe=false")
    items = warmstart_items(config, get_env("dugongs"), backend, judge=None)
    assert [item.elpd for item in items] == [12.5, 3.0]
    assert all(item.source == "sft" and item.ok and item.step_added == 0 for item in items)
    assert all(item.prompt_key == "dugongs" for item in items)


def test_a_demonstration_at_the_upper_clamp_is_named_in_a_warning(tmp_path, backend, caplog):
    reference = get_env("dugongs").reference_elpd
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {"prompt": "p", "completion": fenced(), "elpd": reference + 49.0},
            {"prompt": "p", "completion": fenced(PROGRAM + "# b\n"), "elpd": reference + 50.0},
        ],
    )
    config = sft_config(path, "sft_warmstart.dedupe=false")
    with caplog.at_level("WARNING", logger="synthstats"):
        warmstart_items(config, get_env("dugongs"), backend, judge=None)
    (record,) = [r for r in caplog.records if "upper clamp" in r.getMessage()]
    assert "1 demonstrations" in record.getMessage() and "d.jsonl:2" in record.getMessage()


def test_missing_elpd_without_scoring_names_the_line(tmp_path, backend):
    path = write_lines(tmp_path / "d.jsonl", [{"completion": fenced()}])
    with pytest.raises(DemonstrationError, match=r"d.jsonl:1: no 'elpd'"):
        warmstart_items(sft_config(path), get_env("dugongs"), backend, judge=None)


def test_disabled_warmstart_adds_nothing(tmp_path, backend):
    config = resolve(["env=dugongs"])
    assert warmstart_items(config, get_env("dugongs"), backend, judge=None) == []


def test_dedupe_and_max_examples_and_other_envs(tmp_path, backend):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {"completion": fenced(), "elpd": 1.0},
            {"completion": fenced(), "elpd": 1.0},
            {"completion": fenced(PROGRAM.replace("2, 1", "2, 2")), "elpd": 2.0},
            {"completion": fenced(PROGRAM.replace("2, 1", "2, 3")), "elpd": 3.0, "env": "surgical"},
            {"completion": fenced(PROGRAM.replace("2, 1", "2, 4")), "elpd": 4.0},
        ],
    )
    env = get_env("dugongs")
    items = warmstart_items(sft_config(path), env, backend, judge=None)
    assert [item.elpd for item in items] == [1.0, 2.0, 4.0]
    kept_twice = warmstart_items(
        sft_config(path, "sft_warmstart.dedupe=false"), env, backend, judge=None
    )
    assert [item.elpd for item in kept_twice] == [1.0, 1.0, 2.0, 4.0]
    first_two = warmstart_items(
        sft_config(path, "sft_warmstart.max_examples=2"), env, backend, judge=None
    )
    assert [item.elpd for item in first_two] == [1.0, 2.0]


def test_think_spans_follow_the_thinking_mode(tmp_path, backend):
    path = write_lines(
        tmp_path / "d.jsonl", [{"completion": fenced(think="a linear model"), "elpd": 1.0}]
    )
    env = get_env("dugongs")
    without_think = backend.tokenize_completion(fenced())
    with_think = backend.tokenize_completion(fenced(think="a linear model"))
    (off,) = warmstart_items(sft_config(path), env, backend, judge=None)
    assert list(off.completion_ids) == without_think
    latent_config = sft_config(path, "policy.thinking=latent")
    (latent,) = warmstart_items(latent_config, env, backend, judge=None)
    assert list(latent.completion_ids) == with_think
    stripped_config = sft_config(
        path, "policy.thinking=latent", "sft_warmstart.strip_thinking=true"
    )
    (stripped,) = warmstart_items(stripped_config, env, backend, judge=None)
    # Under latent the canonical form always has a span: the stripped one is Qwen3's empty one.
    assert list(stripped.completion_ids) == backend.tokenize_completion(fenced(think="\n\n"))
    assert strip_think(fenced(think="x")) == fenced()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"d.jsonl:2: not valid JSON"),
        (json.dumps({"prompt": "p"}), r"d.jsonl:2: no 'completion' text"),
        (json.dumps({"completion": "no fence here"}), r"d.jsonl:2: .*no closed ```python block"),
        (json.dumps({"completion": "```python\nx = 1\n"}), r"d.jsonl:2: .*no closed"),
        (json.dumps({"completion": fenced(), "elpd": "high"}), r"d.jsonl:2: 'elpd' must be"),
        (json.dumps({"completion": fenced(), "prompt": 3}), r"d.jsonl:2: 'prompt' must be"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "d.jsonl", [{"completion": fenced(), "elpd": 1.0}, line])
    with pytest.raises(DemonstrationError, match=message):
        read_demonstrations(path, strip_thinking=False, skip_invalid=False)
    kept = read_demonstrations(path, strip_thinking=False, skip_invalid=True)
    assert [d.line for d in kept] == [1]


def test_missing_file_and_builtin_paths(tmp_path):
    with pytest.raises(DemonstrationError, match="no such file"):
        resolve_data_path(str(tmp_path / "nope.jsonl"))
    builtin = resolve_data_path("builtin:dugongs")
    assert builtin.is_file()
    assert len(read_demonstrations(builtin, strip_thinking=True, skip_invalid=False)) >= 8


def test_log_clamp_applies_to_demonstration_rewards(tmp_path):
    from synthstats.replay import ReplayItem
    from synthstats.train.loop import Trainer

    env = get_env("dugongs")
    config = resolve(["sft_warmstart.log_clamp=[-1,2]", "objective.reward.high=50"])
    trainer = Trainer.__new__(Trainer)
    trainer.config, trainer.env = config, env

    def item(source: str) -> ReplayItem:
        return ReplayItem("dugongs", (1,), source, env.reference_elpd + 30, True, None, 0, source)

    rewards = trainer._program_log_rewards([item("sft"), item("fresh")], step=0)
    assert torch.allclose(rewards, torch.tensor([2.0, 30.0]))


def test_bad_demonstration_file_stops_the_cli_before_training(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"completion": fenced(), "elpd": 1.0}, "{oops"])
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        train,
        [
            "policy=mock",
            "judge=fast",
            "judge.workers=1",
            f"output_dir={run_dir}",
            "sft_warmstart.enabled=true",
            f"sft_warmstart.data_path={path}",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2
    assert "d.jsonl:2: not valid JSON" in result.output
    assert latest_checkpoint(run_dir) is None


@pytest.mark.slow
def test_scored_demonstrations_reach_the_buffer_and_first_batch(tmp_path, backend):
    env = get_env("dugongs")
    path = write_lines(
        tmp_path / "d.jsonl",
        [{"completion": fenced()}, {"completion": fenced(env.reference_program)}],
    )
    config = sft_config(
        path,
        "sft_warmstart.compute_rewards=true",
        "judge=fast",
        "judge.workers=1",
        f"judge.cache_path={tmp_path / 'cache.sqlite'}",
    )
    with JudgePool(config.judge) as judge:
        items = warmstart_items(config, env, backend, judge)
    assert all(item.ok and item.elpd is not None for item in items)
    assert items[1].elpd > items[0].elpd  # the reference beats a constant mean

    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        train,
        [
            "policy=mock",
            "policy.max_new_tokens=256",
            "runner.train.steps=1",
            "runner.train.batch_size=4",
            f"output_dir={run_dir}",
            *[f"{key}={value}" for key, value in _judge_and_sft(path, tmp_path).items()],
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["replayed"] >= 1 and first["batch_reward_max"] > -20
    replay = load_loop_state(latest_checkpoint(run_dir))["replay"]
    sources = [item["source"] for item in replay["items"]]
    assert sources.count("sft") == 2


def _judge_and_sft(path: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "judge": "fast",
        "judge.workers": "1",
        "judge.cache_path": str(tmp_path / "cache.sqlite"),
        "sft_warmstart.enabled": "true",
        "sft_warmstart.data_path": str(path),
        "sft_warmstart.compute_rewards": "true",
    }


def test_demonstrations_enter_in_canonical_form(tmp_path, backend):
    """Prose around the block and stray whitespace are dropped: the stored ids are the
    program's canonical completion, the one trajectory a sample of it would be paid for."""
    messy = "Here is my model.\n```python\n\n" + PROGRAM + "\n```\nHope it helps."
    path = write_lines(tmp_path / "d.jsonl", [{"completion": messy, "elpd": 1.0}])
    (item,) = warmstart_items(sft_config(path), get_env("dugongs"), backend, judge=None)
    assert list(item.completion_ids) == backend.tokenize_completion(fenced())


def test_shipped_demonstrations_enter_without_their_think_span_under_thinking_off(backend):
    config = resolve(
        [
            "env=surgical",
            "sft_warmstart.enabled=true",
            "sft_warmstart.data_path=builtin:surgical",
            "sft_warmstart.default_elpd=0.0",
            "sft_warmstart.show_progress=false",
        ]
    )
    items = warmstart_items(config, get_env("surgical"), backend, judge=None)
    think = backend.tokenizer.convert_tokens_to_ids("<think>")
    opening = backend.tokenizer("```python", add_special_tokens=False)["input_ids"]
    assert items and all(think not in item.completion_ids for item in items)
    assert all(list(item.completion_ids[: len(opening)]) == opening for item in items)


def test_a_demonstration_longer_than_max_new_tokens_is_refused_or_skipped(tmp_path, backend):
    path = write_lines(
        tmp_path / "d.jsonl",
        [{"completion": fenced(), "elpd": 1.0}, {"completion": fenced("x = 1\n"), "elpd": 1.0}],
    )
    with pytest.raises(DemonstrationError, match=r"d.jsonl:1: \d+ tokens .*max_new_tokens=20"):
        warmstart_items(
            sft_config(path, "policy.max_new_tokens=20"), get_env("dugongs"), backend, judge=None
        )
    config = sft_config(path, "policy.max_new_tokens=20", "sft_warmstart.skip_invalid=true")
    (kept,) = warmstart_items(config, get_env("dugongs"), backend, judge=None)
    assert list(kept.completion_ids) == backend.tokenize_completion(fenced("x = 1\n"))


def test_unjudged_demonstration_elpd_gives_way_to_a_judged_score(tmp_path, backend):
    path = write_lines(tmp_path / "d.jsonl", [{"completion": fenced(), "elpd": 99.0}])
    (demonstration,) = warmstart_items(sft_config(path), get_env("dugongs"), backend, judge=None)
    assert not demonstration.judged
    buffer = ReplayBuffer(8)
    buffer.add([demonstration], lambda item: 0.0)
    judged = dataclasses.replace(demonstration, elpd=-3.0, judged=True, source="fresh")
    buffer.add([judged], lambda item: 0.0)
    assert [item.elpd for item in buffer] == [-3.0]
    # A judged item is never replaced by a later one of the same program.
    buffer.add([dataclasses.replace(judged, elpd=5.0)], lambda item: 0.0)
    assert [item.elpd for item in buffer] == [-3.0]


def test_supervised_phase_lowers_the_demonstrations_nll(tmp_path):
    config = sft_config(
        write_lines(tmp_path / "d.jsonl", [{"completion": fenced("x = 1\n"), "elpd": 1.0}]),
        "policy=mock",
        "runner.train.learning_rate=0.01",
        "runner.train.batch_size=2",
        "sft_warmstart.nll_steps=6",
    )
    local = build_backend(config)
    env = get_env("dugongs")
    items = warmstart_items(config, env, local, judge=None)
    logged = []

    class Recorder:
        def log(self, metrics):
            logged.append(dict(metrics))

    prompt = local.render_prompt(env.render_prompt())
    completions = [item.completion_ids for item in items]
    losses = supervised_phase(config, local, completions, prompt, Recorder(), show_progress=False)
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert [row["nll_loss"] for row in logged] == losses
    assert all(row["phase"] == "sft" for row in logged)
