"""Trajectory balance (TB), sub-trajectory balance (SubTB(lamda)) and detailed balance (DB).

Trajectory b starts at the prompt state s_0, takes completion tokens a_1..a_L (L =
mask[b].sum(), valid tokens first) and ends in the terminal state s_L. Generation is a tree,
so P_B = 1 and every balance condition reads

    log F(s_i) + sum_{t=i}^{j-1} log P_F(a_{t+1} | s_t) = log F(s_j),

with log F(s_0) = log Z(prompt), log F(s_L) = log R(x) and log F(s_t), 0 < t < L, from a
flow estimator. Each loss returns the batch mean of a per-trajectory mean squared residual.
Values at masked positions (log_pf past L, log_flow at 0, at L and past L) are never read.
A trajectory with L = 0 (s_0 terminal) counts as the single residual log Z - log R in all
three losses, so they agree whenever L <= 1.

`huber_delta` bounds the pull of a single trajectory: once its (weighted) root mean squared
residual r exceeds delta, r^2 becomes 2 * delta * r - delta^2 (the Huber loss scaled to
match r^2 where it is quadratic). For TB this is the ordinary Huber loss on the residual.

Shapes: log_pf [B, T], mask [B, T] bool, log_flow [B, T+1], log_reward [B], log_z [B].
"""

from __future__ import annotations

import torch
from torch import Tensor

from synthstats.objectives.geometric import discounted_sum_before


def tb_loss(
    log_pf: Tensor,
    mask: Tensor,
    *,
    log_reward: Tensor,
    log_z: Tensor,
    huber_delta: float | None = None,
) -> Tensor:
    """mean_b (log Z + sum_t log_pf - log R)^2."""
    _check_shapes(log_pf, mask, None, log_reward, log_z)
    dtype = _working_dtype(log_pf)
    residual = log_z.to(dtype) + _masked(log_pf, mask).to(dtype).sum(-1) - log_reward.to(dtype)
    return _penalty(residual.square(), huber_delta).mean()


def subtb_loss(
    log_pf: Tensor,
    mask: Tensor,
    log_flow: Tensor,
    *,
    log_reward: Tensor,
    log_z: Tensor,
    lamda: float = 0.9,
    huber_delta: float | None = None,
) -> Tensor:
    """mean_b of sum_{0<=i<j<=L} lamda^(j-i) delta_ij^2 / sum_{0<=i<j<=L} lamda^(j-i).

    delta_ij = A_i - A_j with A_t = log F(s_t) - sum_{k<t} log_pf[k], so the pair sum
    expands into three discounted prefix sums of 1, A and A^2: O(L) per trajectory. The
    expansion cancels terms of size A^2 (A grows like the prefix log-probability, thousands
    of nats at LM lengths), so it runs in float64; the result comes back in float32 (or the
    input dtype if wider).
    """
    if not 0.0 < lamda <= 1.0:
        raise ValueError(f"lamda must be in (0, 1], got {lamda}")
    _check_shapes(log_pf, mask, log_flow, log_reward, log_z)
    flows = _state_log_flows(mask, log_flow, log_reward, log_z).double()
    prefix_log_pf = _prefix_sums(_masked(log_pf, mask).double())
    potential = flows - prefix_log_pf
    moments = torch.stack([torch.ones_like(potential), potential, potential.square()])
    w0, w1, w2 = discounted_sum_before(moments, lamda)
    pair_sum_ending_at = w2 - 2 * potential * w1 + potential.square() * w0
    ends = _state_mask(mask)
    weighted = torch.where(ends, pair_sum_ending_at, 0.0).sum(-1)
    total_weight = torch.where(ends, w0, 0.0).sum(-1)
    mean_square = weighted / total_weight.clamp(min=torch.finfo(torch.float64).tiny)
    mean_square = _empty_as_tb(mean_square, mask, log_reward, log_z)
    return _penalty(mean_square, huber_delta).mean().to(_working_dtype(log_pf))


def db_loss(
    log_pf: Tensor,
    mask: Tensor,
    log_flow: Tensor,
    *,
    log_reward: Tensor,
    log_z: Tensor,
    huber_delta: float | None = None,
) -> Tensor:
    """mean_b of (1/L) sum_{t<L} (log F(s_t) + log_pf[t] - log F(s_{t+1}))^2."""
    _check_shapes(log_pf, mask, log_flow, log_reward, log_z)
    dtype = _working_dtype(log_pf)
    flows = _state_log_flows(mask, log_flow, log_reward, log_z).to(dtype)
    residual = flows[:, :-1] + _masked(log_pf, mask).to(dtype) - flows[:, 1:]
    steps = mask.sum(-1).clamp(min=1)
    mean_square = torch.where(mask, residual.square(), 0.0).sum(-1) / steps
    return _penalty(_empty_as_tb(mean_square, mask, log_reward, log_z), huber_delta).mean()


def _working_dtype(log_pf: Tensor) -> torch.dtype:
    return torch.promote_types(log_pf.dtype, torch.float32)


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    """Zero where masked, with zero gradient there, whatever (even NaN) the values are."""
    return torch.where(mask, values, 0.0)


def _prefix_sums(log_pf: Tensor) -> Tensor:
    """[B, T] -> [B, T+1]: sum_{k<t} log_pf[k] for t = 0..T."""
    return torch.nn.functional.pad(log_pf.cumsum(-1), (1, 0))


def _state_mask(mask: Tensor) -> Tensor:
    """[B, T+1]: True at states s_1..s_L, the ends of the transitions of each trajectory."""
    return torch.nn.functional.pad(mask, (1, 0), value=False)


def _state_log_flows(mask: Tensor, log_flow: Tensor, log_reward: Tensor, log_z: Tensor) -> Tensor:
    """[B, T+1] log F(s_t): log Z at 0, the estimator's values inside, log R at L, 0 after."""
    positions = torch.arange(log_flow.shape[-1], device=log_flow.device)
    lengths = mask.sum(-1, keepdim=True)
    dtype = torch.promote_types(log_flow.dtype, log_reward.dtype)
    inside = _masked(log_flow, (positions > 0) & (positions < lengths)).to(dtype)
    with_reward = torch.where(positions == lengths, log_reward.to(dtype)[:, None], inside)
    return torch.where(positions == 0, log_z.to(dtype)[:, None], with_reward)


def _empty_as_tb(mean_square: Tensor, mask: Tensor, log_reward: Tensor, log_z: Tensor) -> Tensor:
    """A trajectory with no tokens (s_0 terminal) has one residual, log Z - log R, as in TB."""
    empty_residual = (log_z - log_reward).to(mean_square.dtype).square()
    return torch.where(mask.any(-1), mean_square, empty_residual)


def _penalty(mean_square: Tensor, huber_delta: float | None) -> Tensor:
    if huber_delta is None:
        return mean_square
    if huber_delta <= 0:
        raise ValueError(f"huber_delta must be positive, got {huber_delta}")
    threshold = huber_delta**2
    root = mean_square.clamp(min=threshold).sqrt()
    return torch.where(mean_square <= threshold, mean_square, 2 * huber_delta * root - threshold)


def _check_shapes(
    log_pf: Tensor, mask: Tensor, log_flow: Tensor | None, log_reward: Tensor, log_z: Tensor
) -> None:
    batch, steps = log_pf.shape
    if mask.shape != log_pf.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool {tuple(log_pf.shape)}, got {mask.dtype} {mask.shape}")
    if log_flow is not None and log_flow.shape != (batch, steps + 1):
        raise ValueError(f"log_flow must be {(batch, steps + 1)}, got {tuple(log_flow.shape)}")
    for name, value in (("log_reward", log_reward), ("log_z", log_z)):
        if value.shape != (batch,):
            raise ValueError(f"{name} must be ({batch},), got {tuple(value.shape)}")
    lengths = mask.sum(-1, keepdim=True)
    if not torch.equal(mask, torch.arange(steps, device=mask.device) < lengths):
        raise ValueError("mask must mark each trajectory's valid tokens first (right padding)")
