"""Failed completions: discarded from the balance, pushed toward zero probability.

The target is p(x | valid) proportional to R(x) over valid programs x; a failed sample is
discarded, as a user would discard it, and p(valid) is the sampler's efficiency. Why this
and not a finite failure reward: failing token sequences outnumber valid programs by far,
so any finite R(fail) puts almost all of a normalised target's mass on failures, and a
squared residual pulls a sampled failure whose log P_F is below log R(fail) - log Z *up*
toward it, dragging log Z along.

The fixed point. Every balance loss here (TB, SubTB(lamda), DB; see balance.py) is summed
over valid trajectories only, with log F(s_L) = log R(x) at a valid terminal x. Each is
zero exactly when, for some constant Z',

    log F(s) = log Z' + log P_theta(reach s)   for every state s on a valid trajectory,
    P_theta(x) = R(x) / Z'                       for every valid x,

(DB and SubTB through the learned flows, TB directly). Summing the second line over valid
x gives p_theta(valid) = sum R / Z', hence

    p_theta(x | valid) = R(x) / sum R          and     log Z' = log sum R - log p_theta(valid).

So the balance pins the conditional and leaves p(valid) free, and the learned log Z (or
VarGrad's batch estimate, taken over valid rows only) tends to log sum R - log p(valid),
not log sum R. Failures never enter a residual, so they never pull log Z.

What drives failure mass down: p_theta(fail) = E_{x ~ P_theta}[1_fail(x)], whose gradient is
E[1_fail(x) grad log P_theta(x)] (score function). `failure_loss` is its Monte Carlo
estimate over the on-policy rows of a batch (fresh samples at temperature 1; replayed or
tempered rows are not draws of P_theta and are left out): descending it lowers p(fail),
so p(valid) -> 1 and log Z -> log sum R, the unconditional fixed point p(x) = R(x) / sum R.
"""

from __future__ import annotations

import torch
from torch import Tensor


def failure_loss(log_pf: Tensor, mask: Tensor, *, failed: Tensor, on_policy: Tensor) -> Tensor:
    """(1/n) sum over the n on-policy rows of 1_fail * log P_F(x): gradient = grad p(fail).

    Zero (with a graph) when the batch has no on-policy row.
    """
    if failed.shape != on_policy.shape or failed.shape != log_pf.shape[:1]:
        raise ValueError(
            f"failed {tuple(failed.shape)} and on_policy {tuple(on_policy.shape)} must be "
            f"({log_pf.shape[0]},)"
        )
    failed, on_policy = (
        failed.to(log_pf.device, torch.bool),
        on_policy.to(log_pf.device, torch.bool),
    )
    total = torch.where(mask, log_pf, 0.0).sum(-1)
    chosen = failed & on_policy
    count = int(on_policy.sum())
    return torch.where(chosen, total, 0.0).sum() / max(count, 1)
