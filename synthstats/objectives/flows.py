"""Flow estimators: log F(s_t) for the states s_0..s_T of each trajectory, for SubTB and DB.

Two plain nn.Modules that checkpoint with the run, both read a FlowInputs and return
log_flow [B, T+1] (the losses ignore entries 0 and L, which are log Z and log R):

- HiddenStateFlowHead: an MLP over the LM's final hidden states at s_0..s_T (local backend;
  those are the positions whose logits score a_1..a_{T+1}). Gradients flow into the LM
  unless the backend detaches the hidden states.
- PrefixFlowNet: a small GRU over the completion token ids, started from a learned vector
  per prompt key. Needs only token ids, so it runs on the client with any backend (Tinker).

Under a good policy log F(s_t) falls roughly linearly in t (it tracks log Z plus the prefix
log-probability, thousands of nats down at LM lengths), so both add a learned slope * t to
their network output instead of asking a bounded network to count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from synthstats.objectives.log_z import PromptIndex


@dataclass(frozen=True)
class FlowInputs:
    """What a flow estimator may read about a batch of trajectories."""

    prompt_keys: Sequence[str]
    completion_ids: Tensor  # [B, T] long
    mask: Tensor  # [B, T] bool, valid tokens first
    hidden_states: Tensor | None = None  # [B, T+1, H], the LM's final hidden state at s_t


class _PositionSlope(nn.Module):
    """slope * t for t = 0..T, the linear drift of log F along a trajectory."""

    def __init__(self) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.zeros(1))

    def forward(self, n_states: int) -> Tensor:
        positions = torch.arange(n_states, device=self.slope.device, dtype=self.slope.dtype)
        return self.slope * positions


class HiddenStateFlowHead(nn.Module):
    """log F(s_t) = MLP(h_t) + slope * t over the LM's final hidden states."""

    needs_hidden_states: ClassVar[bool] = True

    def __init__(self, hidden_size: int, width: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, width),
            nn.GELU(),
            nn.Linear(width, 1),
        )
        self.drift = _PositionSlope()

    def forward(self, inputs: FlowInputs) -> Tensor:
        if inputs.hidden_states is None:
            raise ValueError("HiddenStateFlowHead needs FlowInputs.hidden_states [B, T+1, H]")
        hidden = inputs.hidden_states.to(self.drift.slope.dtype)
        return self.mlp(hidden).squeeze(-1) + self.drift(hidden.shape[1])


class PrefixFlowNet(nn.Module):
    """log F(s_t) = readout(GRU state after t completion tokens) + slope * t, per prompt."""

    needs_hidden_states: ClassVar[bool] = False

    def __init__(
        self,
        prompt_keys: Iterable[str],
        vocab_size: int,
        embed_dim: int = 32,
        hidden_dim: int = 64,
    ) -> None:
        super().__init__()
        self.index = PromptIndex(prompt_keys)
        self.prompt_state = nn.Embedding(len(self.index), hidden_dim)
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.gru = nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.readout = nn.Linear(hidden_dim, 1)
        self.drift = _PositionSlope()

    def forward(self, inputs: FlowInputs) -> Tensor:
        rows = self.index.rows(inputs.prompt_keys, self.readout.weight.device)
        start = self.prompt_state(rows)
        token_ids = torch.where(inputs.mask, inputs.completion_ids, 0)
        after_tokens, _ = self.gru(self.token_embedding(token_ids), start.unsqueeze(0).contiguous())
        states = torch.cat([start.unsqueeze(1), after_tokens], dim=1)
        return self.readout(states).squeeze(-1) + self.drift(states.shape[1])
