"""log Z, the log partition function per prompt: a learned table, or the VarGrad batch mean.

The table holds one entry per prompt key (the env name when each env has one prompt), in a
single [n_prompts, 1] parameter, so each entry has shape (1,): DeepSpeed cannot broadcast a
0-dim parameter. Keys are sorted, so the row order depends only on the set of keys and a
checkpoint reloads into a table built from the same config. Read it inside the wrapped
module's forward (under ZeRO-3 a parameter read outside forward is empty) and give it its
own optimizer group with a learning rate far above the policy's (ObjectiveConfig.log_z_lr).

VarGrad replaces the learned value by the batch estimate mean(log R - sum log_pf) over the
trajectories of the same prompt. It needs at least two trajectories per prompt (with one,
every residual is 0 and nothing is learned), and with replayed or off-policy samples it
estimates log Z under the sampling mix rather than the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn


class PromptIndex:
    """Maps prompt keys to rows of a per-prompt table, in sorted key order."""

    def __init__(self, prompt_keys: Iterable[str]) -> None:
        self.keys = tuple(sorted(set(prompt_keys)))
        if not self.keys:
            raise ValueError("need at least one prompt key")
        self._rows = {key: row for row, key in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, prompt_keys: Sequence[str], device: torch.device | None = None) -> Tensor:
        unknown = sorted({key for key in prompt_keys if key not in self._rows})
        if unknown:
            raise KeyError(f"prompt keys {unknown} are not in the table {list(self.keys)}")
        return torch.tensor([self._rows[key] for key in prompt_keys], device=device)


class LogZTable(nn.Module):
    """One learned log Z per prompt key; forward(prompt_keys) -> log_z [B]."""

    def __init__(self, prompt_keys: Iterable[str], init: float = 0.0) -> None:
        super().__init__()
        self.index = PromptIndex(prompt_keys)
        self.values = nn.Parameter(torch.full((len(self.index), 1), float(init)))

    def forward(self, prompt_keys: Sequence[str]) -> Tensor:
        return self.values[self.index.rows(prompt_keys, self.values.device), 0]


def vargrad_log_z(
    log_pf: Tensor, mask: Tensor, *, log_reward: Tensor, prompt_keys: Sequence[str]
) -> Tensor:
    """[B]: per prompt, the mean over its trajectories of log R - sum log_pf (no gradient).

    With this log Z the TB loss is the within-prompt variance of log R - sum log_pf; its
    gradient needs no term through the mean (the residuals of a group sum to zero).
    """
    groups = PromptIndex(prompt_keys).rows(prompt_keys, log_pf.device)
    dtype = torch.promote_types(log_pf.dtype, torch.float32)
    log_pf_total = torch.where(mask, log_pf, 0.0).sum(-1)
    estimate = (log_reward.to(dtype) - log_pf_total.to(dtype)).detach()
    n_groups = int(groups.max()) + 1
    totals = torch.zeros(n_groups, dtype=dtype, device=log_pf.device).index_add(0, groups, estimate)
    counts = torch.bincount(groups, minlength=n_groups).to(dtype)
    return (totals / counts)[groups]
