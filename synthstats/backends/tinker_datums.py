"""Trajectories to Tinker datums, and the per-token log-probs Tinker returns back to [B, T].

Tinker scores a datum the causal-LM way: model_input is the sequence without its last
token and target_tokens the sequence shifted left by one, so logprobs[i] is
log p(token i+1 | tokens 0..i). For prompt + completion with P prompt tokens the
completion's log-probs are logprobs[P-1 : P-1+C]: the same log P_F(a_{t+1} | s_t) the
local backend reads. The weights mark the completion (1) and the prompt (0); the SDK
replaces them by -dloss/dlogprobs for the backward pass, which is 0 on the prompt anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tinker import types
from torch import Tensor


def trajectory_datum(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> types.Datum:
    """The datum that scores completion_ids after prompt_ids."""
    if not prompt_ids or not completion_ids:
        raise ValueError("a trajectory needs a non-empty prompt and completion")
    tokens = [*prompt_ids, *completion_ids]
    weights = [0.0] * (len(prompt_ids) - 1) + [1.0] * len(completion_ids)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.asarray(weights, dtype=np.float32)),
        },
    )


def completion_log_probs(
    logprobs: Sequence[Tensor], prompt_lengths: Sequence[int], completion_lengths: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """log_pf [B, T] (0 past each row's end, gradient kept) and mask [B, T] from datum log-probs."""
    longest = max(completion_lengths)
    rows = []
    for row, prompt_length, length in zip(
        logprobs, prompt_lengths, completion_lengths, strict=True
    ):
        expected = prompt_length + length - 1
        if row.shape != (expected,):
            raise ValueError(
                f"Tinker returned {tuple(row.shape)} log-probs, expected ({expected},)"
            )
        completion = row[prompt_length - 1 :].float()
        rows.append(torch.nn.functional.pad(completion, (0, longest - length)))
    mask = torch.arange(longest)[None, :] < torch.tensor(list(completion_lengths))[:, None]
    return torch.stack(rows), mask


def padded_completions(completion_ids: Sequence[Sequence[int]]) -> Tensor:
    """[B, T] long, right-padded with 0 (the mask says which entries are real)."""
    longest = max(len(ids) for ids in completion_ids)
    padded = torch.zeros((len(completion_ids), longest), dtype=torch.long)
    for b, ids in enumerate(completion_ids):
        padded[b, : len(ids)] = torch.tensor(list(ids))
    return padded


def scored_completion(
    sequence_logprobs: Sequence[float | None], prompt_length: int, completion_length: int
) -> Tensor:
    """[C] from compute_logprobs over prompt + completion, where entry i scores token i."""
    values = list(sequence_logprobs[prompt_length : prompt_length + completion_length])
    if len(values) != completion_length or any(value is None for value in values):
        raise ValueError(
            f"Tinker scored {len(sequence_logprobs)} tokens without the whole completion "
            f"(prompt {prompt_length}, completion {completion_length})"
        )
    return torch.tensor(values, dtype=torch.float32)
