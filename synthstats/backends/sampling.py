"""Ancestral sampling with a KV cache, one temperature per row, and nothing else.

Written out instead of calling `generate` so that the distribution is exactly
softmax(logits[:vocab] / T): no top-k / top-p / repetition warpers leak in from a hub
model's generation_config, the draw comes from a seeded generator (resume determinism),
and the ids returned are exactly the ids drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SampledIds:
    completion_ids: list[int]
    truncated: bool
    # log P_F of each drawn id at temperature 1, from the very logits it was drawn from.
    log_probs: list[float]


@torch.no_grad()
def sample_completions(
    causal_lm: nn.Module,
    prompt_ids: Sequence[int],
    temperatures: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    vocab_size: int,
    generator: torch.Generator,
) -> list[SampledIds]:
    """Sample one completion per temperature from one prompt.

    Logits are cut to the tokenizer's `vocab_size` (the scorer does the same, so sampling
    and log P_F share one distribution). A row ends at its first stop id, which is kept;
    a row with no stop id within `max_new_tokens` is truncated.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if bool((temperatures <= 0).any()):
        raise ValueError(f"sampling temperatures must be > 0, got {temperatures.tolist()}")
    rows = temperatures.shape[0]
    device = temperatures.device
    stops = torch.tensor(list(stop_ids), device=device)
    input_ids = torch.tensor([list(prompt_ids)], device=device).repeat(rows, 1)
    output = causal_lm(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    drawn, log_probs = [], []
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    while True:
        logits = output.logits[:, -1, :vocab_size].float()
        probs = torch.softmax(logits / temperatures[:, None], dim=-1)
        next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        drawn.append(next_ids)
        log_probs.append(logits.log_softmax(-1).gather(-1, next_ids[:, None]).squeeze(-1))
        finished |= torch.isin(next_ids, stops)
        if bool(finished.all()) or len(drawn) == max_new_tokens:
            break
        output = causal_lm(input_ids=next_ids[:, None], cache=output.cache, use_cache=True)
    rows = zip(torch.stack(drawn, 1).tolist(), torch.stack(log_probs, 1).tolist(), strict=True)
    return [_cut_at_stop(ids, scores, set(stop_ids)) for ids, scores in rows]


def _cut_at_stop(ids: list[int], log_probs: list[float], stop_ids: set[int]) -> SampledIds:
    for position, token in enumerate(ids):
        if token in stop_ids:
            return SampledIds(ids[: position + 1], False, log_probs[: position + 1])
    return SampledIds(ids, True, log_probs)
