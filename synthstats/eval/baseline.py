"""The reward maximiser a slot run trains beside the GFlowNet, to show what matching p* buys.

REINFORCE with a batch-mean baseline and no entropy bonus climbs E[R], so it drifts towards
the best programs instead of spreading over them in proportion to R: its distance from
p* = R / sum R stays large where a GFlowNet's falls. It fits the Objective protocol, so the
same loop and backend train it; it reads neither log Z nor flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class PolicyGradient:
    """loss = -mean((R - mean R) * log p_theta(x)) over the batch, with R = exp(log R)."""

    needs_flow: ClassVar[bool] = False

    def __call__(
        self,
        log_pf: Tensor,
        mask: Tensor,
        log_flow: Tensor | None = None,
        *,
        log_reward: Tensor,
        log_z: Tensor,
    ) -> Tensor:
        reward = log_reward.exp()
        advantage = (reward - reward.mean()).detach()
        log_p = torch.where(mask, log_pf, 0.0).sum(-1)
        return -(advantage * log_p).mean()
