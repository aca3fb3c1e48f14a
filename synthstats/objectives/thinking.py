"""Think tokens: what a GFlowNet over (think z, program x) must be rewarded with.

With the reward on the program alone and P_B = 1, the target p(z, x) is proportional to
R(x) for every think string z: uniform over think strings, which rewards gibberish and lets
log Z grow with think length. Two modes:

- "off": no think span (Qwen3 `enable_thinking=False`); log R is the program's. The
  default for training.
- "latent": log R(z, x) = log R(x) + log p_ref(z | prompt), with p_ref the frozen reference
  model (LoRA disabled locally, the base model on Tinker). The target's think distribution
  is then p_ref's and its marginal over programs stays proportional to R(x), since
  sum_z p_ref(z | prompt) does not depend on x.

The think span z is the completion up to and including the first end-of-think token (all
valid tokens if there is none; such a completion has no program and fails the judge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor

ThinkingMode = Literal["off", "latent"]
THINKING_MODES: tuple[ThinkingMode, ...] = ("off", "latent")


def think_span_mask(completion_ids: Tensor, mask: Tensor, *, think_end_id: int) -> Tensor:
    """[B, T] bool: the valid tokens up to and including the first `think_end_id`."""
    is_end = (completion_ids == think_end_id) & mask
    ends_before = (is_end.long().cumsum(-1) - is_end.long()) > 0
    return mask & ~ends_before


def think_log_prob(ref_log_probs: Tensor, span_mask: Tensor) -> Tensor:
    """[B] log p_ref(z | prompt): the reference model's token log-probs summed over the span."""
    return torch.where(span_mask, ref_log_probs, 0.0).sum(-1)


def latent_think_log_reward(program_log_reward: Tensor, think_ref_log_prob: Tensor) -> Tensor:
    """log R(z, x) = log R(x) + log p_ref(z | prompt), for thinking: latent."""
    return program_log_reward + think_ref_log_prob.to(program_log_reward.dtype)


class ThinkReference(Protocol):
    """What a policy offers for thinking: latent: its frozen reference model's log p(z)."""

    def reference_think_log_prob(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> Tensor: ...


def objective_log_reward(
    reference: ThinkReference,
    thinking: ThinkingMode,
    program_log_reward: Tensor,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
) -> Tensor:
    """[B] the log R that training matches log P_F(z, x) + log Z to: the program's, plus the
    think span's log p_ref(z | prompt) for thinking: latent.

    One definition for the learner and for `synthstats eval`, which must judge the policy
    against the very target it was trained on.
    """
    if thinking != "latent":
        return program_log_reward
    think = reference.reference_think_log_prob(prompt_ids, completion_ids)
    return latent_think_log_reward(program_log_reward, think)
