"""Find the program in a raw completion: drop the thinking, take the last closed python block.

A completion cut off at the token limit ends inside its fence; it has no program, even if
an earlier block was closed, because the model was still writing its answer.
"""

from __future__ import annotations

import re

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"^[ \t]*```(.*)$", re.MULTILINE)


def extract_program(completion: str) -> str | None:
    """The last closed ```python block outside <think>...</think>, or None if there is none."""
    text = _THINK.sub("", completion)
    if "<think>" in text:  # thinking never closed: the answer was never written
        return None
    last_block = None
    opening = None
    for fence in _FENCE.finditer(text):
        info = fence.group(1).strip()
        if opening is None:
            opening = fence
            continue
        if info:  # a fence with a language tag opens a new block; the old one never closed
            opening = fence
            continue
        if opening.group(1).strip().lower() in ("python", "python3", "py"):
            last_block = text[opening.end() + 1 : fence.start()]
        opening = None
    if opening is not None:  # the completion ends inside a fence: truncated
        return None
    return last_block
