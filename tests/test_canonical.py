"""Canonical completions: one program is one trajectory, on the real Qwen3 tokenizer and
through the loop's check before judging (every backend's rollouts pass it)."""

from __future__ import annotations

import pytest

from synthstats.backends import build_backend
from synthstats.backends.base import Rollout
from synthstats.backends.canonical import (
    canonical_completion,
    noncanonical_reason,
    text_noncanonical_reason,
)
from synthstats.config import Config
from synthstats.envs import get_env
from synthstats.judge.extract import extract_program
from synthstats.judge.score import ERROR_KINDS
from synthstats.objectives import build_objective
from synthstats.train.loop import Trainer

PROGRAM = (
    'import pymc as pm\nwith pm.Model() as model:\n    pm.Normal("y", 0, 1, observed=data["y"])'
)


@pytest.fixture(scope="module")
def backend():
    config = Config()
    config.policy.max_new_tokens = 8
    return build_backend(config)


def test_canonical_text_round_trips_through_extraction():
    for thinking, think in (("off", None), ("latent", "\nshort\n"), ("latent", None)):
        text = canonical_completion(PROGRAM + "\n\n", thinking, think)
        assert text_noncanonical_reason(text, thinking) is None
        assert extract_program(text) == PROGRAM + "\n"
    assert canonical_completion(PROGRAM, "latent").startswith("<think>\n\n</think>\n\n```python\n")
    with pytest.raises(ValueError, match="fence"):
        canonical_completion("x = 1\n```\ny = 2", "off")


@pytest.mark.parametrize(
    "text",
    [
        f"Here it is:\n```python\n{PROGRAM}\n```",  # prose before
        f"```python\n{PROGRAM}\n```\nDone.",  # prose after
        f"```python\nx = 1\n```\n```python\n{PROGRAM}\n```",  # a discarded block first
        f"```python\n\n{PROGRAM}\n```",  # extra whitespace inside the fence
        f"```python\n{PROGRAM}  \n```",
        f"```py\n{PROGRAM}\n```",
        f"<think>z</think>\n\n```python\n{PROGRAM}\n```",  # a think span with thinking off
    ],
)
def test_other_spellings_of_a_program_are_noncanonical(text):
    assert text_noncanonical_reason(text, "off") is not None


def test_latent_needs_the_think_span_and_its_separator():
    block = f"```python\n{PROGRAM}\n```"
    assert text_noncanonical_reason(block, "latent") is not None
    assert text_noncanonical_reason(f"<think>z</think>\n{block}", "latent") is not None
    assert text_noncanonical_reason(f"<think>z</think>\n\n{block}", "latent") is None


def test_token_level_canonical_form_on_the_qwen3_tokenizer(backend):
    text = canonical_completion(PROGRAM, "off")
    ids = backend.tokenize_completion(text)
    check = {"thinking": "off", "tokenize_completion": backend.tokenize_completion}
    assert ids[-1] == backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert noncanonical_reason(ids, text, **check) is None
    # The same text ending at <|endoftext|>: a second ending of the same program.
    endoftext = backend.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert endoftext in backend.stop_ids
    assert "im_end" in noncanonical_reason([*ids[:-1], endoftext], text, **check)
    # The same text in other tokens: "```python" spelled one character per token.
    pieces = [
        backend.tokenizer.convert_tokens_to_ids(backend.tokenizer.tokenize(character)[0])
        for character in "```python"
    ]
    opening = len(backend.tokenizer("```python", add_special_tokens=False)["input_ids"])
    respelled = [*pieces, *ids[opening:]]
    assert backend.tokenizer.decode(respelled[:-1]) == text
    assert "encoding" in noncanonical_reason(respelled, text, **check)


def test_the_loop_fails_noncanonical_rollouts_before_the_judge(backend, tmp_path):
    assert "noncanonical" in ERROR_KINDS
    config = Config()
    trainer = Trainer(
        config,
        get_env("dugongs"),
        backend,
        judge=None,
        objective=build_objective(config.objective),
        metrics=None,
        run_dir=tmp_path,
        config_yaml="",
    )
    text = canonical_completion(PROGRAM, "off")
    ids = tuple(backend.tokenize_completion(text))

    def rollout(completion_ids: tuple[int, ...], body: str, truncated: bool = False) -> Rollout:
        return Rollout("dugongs", (1,), completion_ids, body, truncated, 1.0)

    assert trainer._verdict_before_judging(rollout(ids, text)) is None
    prose = "Sure:\n" + text
    verdict = trainer._verdict_before_judging(
        rollout(tuple(backend.tokenize_completion(prose)), prose)
    )
    assert not verdict.ok and verdict.error_kind == "noncanonical"
    cut = trainer._verdict_before_judging(rollout(ids[:-1], text, truncated=True))
    assert cut.error_kind == "no_program"
