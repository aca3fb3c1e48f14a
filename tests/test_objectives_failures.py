"""Failures: out of the balance loss, pushed down on-policy; the fixed point derived in
synthstats/objectives/failures.py, checked exactly on a two-step tree for TB, SubTB and DB."""

from __future__ import annotations

import math

import pytest
import torch

from synthstats.backends.policy_module import TrajectoryScores, objective_loss
from synthstats.config import ObjectiveConfig
from synthstats.objectives import build_objective, failure_loss

# Two steps: a1 in {0, 1, 2}, then a2 in {0, 1}; outcome x = 2 * a1 + a2.
LOG_R = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.0, 0.0])  # x = 4, 5 fail (a1 = 2)
FAILED = torch.tensor([False, False, False, False, True, True])


class TreePolicy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Parameter(torch.zeros(3))
        self.second = torch.nn.Parameter(torch.zeros(3, 2))
        self.flow = torch.nn.Parameter(torch.zeros(3))  # log F(s_1) per a1
        self.log_z = torch.nn.Parameter(torch.zeros(1))

    def log_probs(self) -> torch.Tensor:
        """[6] log P_theta(x)."""
        first = self.first.log_softmax(-1)[:, None]
        return (first + self.second.log_softmax(-1)).reshape(6)

    def scores(self, outcomes: torch.Tensor) -> TrajectoryScores:
        a1, a2 = outcomes // 2, outcomes % 2
        log_pf = torch.stack(
            [self.first.log_softmax(-1)[a1], self.second.log_softmax(-1)[a1, a2]], -1
        )
        mask = torch.ones_like(log_pf, dtype=torch.bool)
        log_flow = torch.stack([torch.zeros_like(log_pf[:, 0]), self.flow[a1], log_pf[:, 0]], -1)
        return TrajectoryScores(log_pf, mask, log_flow, self.log_z.expand(len(outcomes)))


def train_tree(loss: str, failure_weight: float, steps: int = 600) -> TreePolicy:
    torch.manual_seed(0)
    policy = TreePolicy()
    objective = build_objective(ObjectiveConfig(loss=loss))
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.05)
    for _ in range(steps):
        with torch.no_grad():
            outcomes = torch.multinomial(policy.log_probs().exp(), 32, replacement=True)
        loss_value, _ = objective_loss(
            objective,
            policy.scores(outcomes),
            LOG_R[outcomes],
            ["p"] * len(outcomes),
            failed=FAILED[outcomes],
            on_policy=torch.ones(len(outcomes), dtype=torch.bool),
            failure_weight=failure_weight,
        )
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
    return policy


@pytest.mark.parametrize("loss", ["tb", "subtb", "db"])
def test_fixed_point_is_the_conditional_target_and_log_z_follows_p_valid(loss):
    target = (LOG_R[~FAILED] - LOG_R[~FAILED].logsumexp(0)).exp()
    log_sum_r = float(LOG_R[~FAILED].logsumexp(0))
    efficiency = {}
    for weight in (0.0, 1.0):
        policy = train_tree(loss, weight)
        with torch.no_grad():
            p = policy.log_probs().exp()
        p_valid = float(p[~FAILED].sum())
        conditional = p[~FAILED] / p_valid
        assert 0.5 * float((conditional - target).abs().sum()) < 0.05, (loss, weight)
        # The derivation: log Z' = log sum R - log p(valid).
        expected_log_z = log_sum_r - math.log(p_valid)
        assert abs(float(policy.log_z.detach()) - expected_log_z) < 0.1, (loss, weight)
        efficiency[weight] = p_valid
    print(loss, efficiency)
    assert efficiency[1.0] > 0.98 and efficiency[1.0] > efficiency[0.0], loss


def test_failure_loss_gradient_is_the_gradient_of_failure_mass():
    policy = TreePolicy()
    with torch.no_grad():
        policy.first.copy_(torch.tensor([0.3, -0.2, 0.5]))
        policy.second.copy_(torch.tensor([[0.1, 0.4], [-0.3, 0.2], [0.7, -0.1]]))
    # E_x~p[grad (1_fail(x) log p(x))], summed exactly over the six outcomes.
    p = policy.log_probs().exp().detach()
    expected_grad = torch.zeros(3)
    for outcome in range(6):
        scores = policy.scores(torch.tensor([outcome]))
        term = failure_loss(
            scores.log_pf,
            scores.mask,
            failed=FAILED[[outcome]],
            on_policy=torch.tensor([True]),
        )
        (grad,) = torch.autograd.grad(term, policy.first, allow_unused=False)
        expected_grad += p[outcome] * grad
    (direct,) = torch.autograd.grad(policy.log_probs().exp()[FAILED].sum(), policy.first)
    torch.testing.assert_close(expected_grad, direct)


def test_failed_rows_never_reach_the_balance_loss_or_log_z():
    policy = TreePolicy()
    objective = build_objective(ObjectiveConfig(loss="tb"))
    outcomes = torch.tensor([0, 3, 4, 5])
    failed = FAILED[outcomes]
    losses = []
    for failure_value in (-25.0, 1000.0):
        log_reward = torch.where(failed, failure_value, LOG_R[outcomes])
        loss, log_z = objective_loss(
            objective, policy.scores(outcomes), log_reward, ["p"] * 4, failed=failed
        )
        assert log_z.shape == (2,)
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    # VarGrad's batch log Z is the mean over valid rows only.
    scores = policy.scores(outcomes)
    vargrad = TrajectoryScores(scores.log_pf, scores.mask, None, None)
    _, log_z = objective_loss(objective, vargrad, LOG_R[outcomes], ["p"] * 4, failed=failed)
    valid_log_pf = scores.log_pf[~failed].sum(-1)
    torch.testing.assert_close(log_z, (LOG_R[outcomes][~failed] - valid_log_pf).mean().expand(2))
    # Off-policy failures (replayed, tempered) get no failure term either.
    off = objective_loss(
        objective,
        scores,
        LOG_R[outcomes],
        ["p"] * 4,
        failed=failed,
        on_policy=torch.zeros(4, dtype=torch.bool),
    )[0]
    torch.testing.assert_close(off, losses[0])
