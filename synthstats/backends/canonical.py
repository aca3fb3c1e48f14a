"""The canonical completion of a program: the one token sequence that earns its reward.

Every completion that extracts to program x would otherwise earn R(x): prose around the
fence, an earlier discarded block, other whitespace, another tokenisation of the same text,
or a stop at <|endoftext|> instead of <|im_end|>. Each is a separate trajectory, so the
fixed point would be p(x) proportional to R(x) N(x), with N(x) the number of such sequences.
Paying only the canonical form makes one program one trajectory (given the think span):

    thinking off:     ```python\\n{program}\\n```<|im_end|>
    thinking latent:  <think>{z}</think>\\n\\n```python\\n{program}\\n```<|im_end|>

where program has no leading or trailing whitespace and no ``` inside, z has no </think>
inside (z is the latent, rewarded by p_ref(z); see objectives/thinking.py), and the ids are
exactly the tokenizer's encoding of the text followed by the stop token. Any other
completion fails with error kind `noncanonical`. The loop checks every sampled rollout of
every backend with `noncanonical_reason`, before the judge sees it; demonstrations enter
training through `canonical_completion`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from synthstats.objectives import ThinkingMode

FENCE_OPEN = "```python\n"
FENCE_CLOSE = "\n```"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_SEPARATOR = "\n\n"
# What Qwen3 writes when it does not think; a latent demonstration without a span gets it.
EMPTY_THINK = "\n\n"


def canonical_completion(program: str, thinking: ThinkingMode, think: str | None = None) -> str:
    """The canonical text (stop token excluded) of a program, with think span z if latent."""
    body = program.strip()
    if not body or "```" in body:
        raise ValueError("a program in canonical form is non-empty and holds no ``` fence")
    block = f"{FENCE_OPEN}{body}{FENCE_CLOSE}"
    if thinking == "off":
        return block
    z = EMPTY_THINK if think is None else think
    if THINK_CLOSE in z:
        raise ValueError(f"a think span cannot contain {THINK_CLOSE}")
    return f"{THINK_OPEN}{z}{THINK_CLOSE}{THINK_SEPARATOR}{block}"


def text_noncanonical_reason(text: str, thinking: ThinkingMode) -> str | None:
    """Why this text (stop token excluded) is not a canonical completion, or None."""
    block = text
    if thinking == "latent":
        if not text.startswith(THINK_OPEN) or THINK_CLOSE not in text:
            return "thinking latent: the completion must open with a <think>...</think> span"
        end = text.index(THINK_CLOSE) + len(THINK_CLOSE)
        if not text[end:].startswith(THINK_SEPARATOR):
            return r"the think span must be followed by exactly \n\n and the block"
        block = text[end + len(THINK_SEPARATOR) :]
    if not block.startswith(FENCE_OPEN):
        return "the completion must be exactly one ```python block (nothing before it)"
    if not block.endswith(FENCE_CLOSE):
        return "the block must end with \\n``` and nothing after it"
    body = block[len(FENCE_OPEN) : -len(FENCE_CLOSE)]
    if not body.strip() or body != body.strip() or "```" in body:
        return "the program must be non-empty, without surrounding whitespace or inner fences"
    return None


def noncanonical_reason(
    completion_ids: Sequence[int],
    text: str,
    *,
    thinking: ThinkingMode,
    tokenize_completion: Callable[[str], list[int]],
) -> str | None:
    """Why a sampled completion is not canonical, or None when it earns its reward.

    `text` is the completion decoded without its final stop token; `tokenize_completion`
    is the backend's (the tokenizer's encoding plus <|im_end|>), so a stop at any other
    token, or ids that are another tokenisation of the same text, fail here.
    """
    reason = text_noncanonical_reason(text, thinking)
    if reason is not None:
        return reason
    if list(completion_ids) != list(tokenize_completion(text)):
        return "the ids are not the tokenizer's encoding of the text followed by <|im_end|>"
    return None
