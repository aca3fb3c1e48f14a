"""One nn.Module holding everything trainable: the PEFT model, the log Z table, the flow head.

Accelerate and DeepSpeed synchronise only what is inside the module they prepare, and under
ZeRO-3 a parameter read outside `forward` is empty, so log Z and the flow estimator live
here and are read in `forward`, which returns everything the objective needs.

Scoring layout: each row is prompt + completion, right-padded, so positions need no
adjustment. State s_t (prompt plus the first t completion tokens) ends at column
P_b - 1 + t; its final hidden state gives both the logits of a_{t+1} and, for the hidden
head, log F(s_t). Only those T + 1 columns go through the LM head, never the prompt's.
This assumes logits = lm_head(final hidden state), true of Qwen3 and most causal LMs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from synthstats.objectives import FlowInputs, LogZTable, Objective, failure_loss, vargrad_log_z


@dataclass(frozen=True)
class ScoringInputs:
    """A padded batch of trajectories, ready for PolicyWithFlows.forward."""

    prompt_keys: Sequence[str]
    input_ids: Tensor  # [B, S] prompt + completion, right-padded
    attention_mask: Tensor  # [B, S]
    state_positions: Tensor  # [B, T+1] column where state s_t ends
    completion_ids: Tensor  # [B, T] right-padded
    mask: Tensor  # [B, T] bool, valid tokens first


class TrajectoryScores(NamedTuple):
    """What forward returns. A NamedTuple, so DDP and DeepSpeed ZeRO-3 find its tensors
    (ZeRO-3 hooks its backward pass through them)."""

    log_pf: Tensor  # [B, T] float32, log P_F(a_{t+1} | s_t) at temperature 1
    mask: Tensor  # [B, T] bool
    log_flow: Tensor | None  # [B, T+1], None without a flow estimator
    log_z: Tensor | None  # [B], None without a learned log Z table


def objective_loss(
    objective: Objective,
    scores: TrajectoryScores,
    log_reward: Tensor,
    prompt_keys: Sequence[str],
    *,
    failed: Tensor | None = None,
    on_policy: Tensor | None = None,
    failure_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The loss and the log Z it used, for the valid rows. One place for every backend.

    The balance objective runs on the valid rows only (failed ones never pull log Z; see
    synthstats.objectives.failures for the fixed point), with the learned table's log Z or,
    for a policy without one, VarGrad's estimate from the valid rows of this very batch.
    `failure_weight` times `failure_loss` over the on-policy rows pushes failure mass down.
    `failed` / `on_policy` ([B] bool) default to none failed and none on-policy.
    """
    rows = len(prompt_keys)
    device = scores.log_pf.device
    failed = torch.zeros(rows, dtype=torch.bool) if failed is None else failed
    on_policy = torch.zeros(rows, dtype=torch.bool) if on_policy is None else on_policy
    failed, on_policy = failed.to(device, torch.bool), on_policy.to(device, torch.bool)
    valid = ~failed
    keys = [key for key, ok in zip(prompt_keys, valid.tolist(), strict=True) if ok]
    log_pf, mask = scores.log_pf[valid], scores.mask[valid]
    log_flow = None if scores.log_flow is None else scores.log_flow[valid]
    reward = log_reward.to(device)[valid]
    if scores.log_z is not None:
        log_z = scores.log_z[valid]
    elif keys:
        log_z = vargrad_log_z(log_pf, mask, log_reward=reward, prompt_keys=keys)
    else:
        log_z = reward  # empty
    if keys:
        loss = objective(log_pf, mask, log_flow, log_reward=reward, log_z=log_z)
    else:
        # No valid row: a zero loss that still reaches log Z and the flows, so every rank of
        # a distributed run reduces the same parameters.
        touched = [scores.log_pf, scores.log_flow, scores.log_z]
        loss = sum(part.sum() for part in touched if part is not None) * 0.0
    if failure_weight and bool((failed & on_policy).any()):
        penalty = failure_loss(scores.log_pf, scores.mask, failed=failed, on_policy=on_policy)
        loss = loss + failure_weight * penalty
    return loss, log_z


def pack_trajectories(
    prompt_keys: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
) -> ScoringInputs:
    """Right-pad prompt + completion rows and locate each state's last column."""
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(row) for row in rows)
    longest = max(len(c) for c in completion_ids)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completions = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for b, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        if not prompt:
            raise ValueError("every trajectory needs a non-empty prompt")
        input_ids[b, : len(rows[b])] = torch.tensor(rows[b])
        attention_mask[b, : len(rows[b])] = 1
        completions[b, : len(completion)] = torch.tensor(list(completion))
        mask[b, : len(completion)] = True
    starts = torch.tensor([len(prompt) - 1 for prompt in prompt_ids])
    # Columns past a short row's end are clamped; they belong to masked states.
    state_positions = (starts[:, None] + torch.arange(longest + 1)).clamp(max=width - 1)
    return ScoringInputs(
        prompt_keys=list(prompt_keys),
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        state_positions=state_positions.to(device),
        completion_ids=completions.to(device),
        mask=mask.to(device),
    )


class PolicyWithFlows(nn.Module):
    """The PEFT causal LM, the optional log Z table and the optional flow estimator."""

    def __init__(
        self,
        peft_model: nn.Module,
        *,
        vocab_size: int,
        log_z: LogZTable | None,
        flow: nn.Module | None,
    ) -> None:
        super().__init__()
        self.lm = peft_model
        self.vocab_size = vocab_size
        self.log_z = log_z
        self.flow = flow

    def forward(self, inputs: ScoringInputs, *, reference: bool = False) -> TrajectoryScores:
        """log P_F with gradient (plus log F and log Z); `reference` disables the adapter.

        The reference pass (thinking: latent) scores under the frozen base model only.
        """
        if reference:
            with self.lm.disable_adapter():
                states = self._final_states(inputs)
                return TrajectoryScores(self._log_pf(states, inputs), inputs.mask, None, None)
        states = self._final_states(inputs)
        log_flow = None
        if self.flow is not None:
            hidden = states if self.flow.needs_hidden_states else None
            log_flow = self.flow(
                FlowInputs(inputs.prompt_keys, inputs.completion_ids, inputs.mask, hidden)
            )
        log_z = self.log_z(inputs.prompt_keys) if self.log_z is not None else None
        return TrajectoryScores(self._log_pf(states, inputs), inputs.mask, log_flow, log_z)

    def _final_states(self, inputs: ScoringInputs) -> Tensor:
        """[B, T+1, H]: the final hidden state at the end of each state s_0..s_T."""
        decoder = self.lm.get_base_model().get_decoder()
        hidden = decoder(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False
        ).last_hidden_state
        index = inputs.state_positions[..., None].expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, index)

    def _log_pf(self, states: Tensor, inputs: ScoringInputs) -> Tensor:
        head = self.lm.get_base_model().get_output_embeddings()
        logits = head(states[:, :-1])[..., : self.vocab_size].float()
        chosen = logits.gather(-1, inputs.completion_ids[..., None]).squeeze(-1)
        return chosen - logits.logsumexp(-1)
