"""Training on small enumerable trees reaches the GFlowNet target R/Z; reward maximising does not.

Each tree is given by its complete token sequences (leaves). A tabular policy holds one logit
per (prefix, next token); flows are a table per prefix or the PrefixFlowNet. Every step
samples a batch on-policy, padded past the longest leaf with NaN that the losses must ignore,
and the exact terminal distribution is read off the policy at the end.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from synthstats.config import ObjectiveConfig
from synthstats.objectives import (
    DetailedBalance,
    FlowInputs,
    LogZTable,
    PrefixFlowNet,
    SubTrajectoryBalance,
    TrajectoryBalance,
    build_objective,
    latent_think_log_reward,
    log_reward_from_elpd,
    think_log_prob,
    think_span_mask,
)

BATCH = 32
STEPS = 300
KEY = "toy"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PrefixTree:
    """The prefix tree of a set of leaves, with index tensors for a tabular policy."""

    def __init__(self, leaves: list[tuple[int, ...]], padded_length: int) -> None:
        prefixes = sorted({leaf[:t] for leaf in leaves for t in range(len(leaf))}, key=len)
        state_of = {prefix: index for index, prefix in enumerate(prefixes)}
        children = {
            prefix: sorted({leaf[len(prefix)] for leaf in leaves if leaf[: len(prefix)] == prefix})
            for prefix in prefixes
        }
        self.n_states = len(prefixes)
        self.allowed = torch.zeros(
            self.n_states, max(map(len, children.values())), dtype=torch.bool
        )
        for prefix, tokens in children.items():
            self.allowed[state_of[prefix], : len(tokens)] = True
        lengths = torch.tensor([len(leaf) for leaf in leaves])
        self.mask = torch.arange(padded_length) < lengths[:, None]
        self.state = torch.zeros(len(leaves), padded_length, dtype=torch.long)
        self.action = torch.zeros_like(self.state)
        self.ids = torch.zeros_like(self.state)
        for row, leaf in enumerate(leaves):
            for t, token in enumerate(leaf):
                self.state[row, t] = state_of[leaf[:t]]
                self.action[row, t] = children[leaf[:t]].index(token)
                self.ids[row, t] = token

    def log_pf(self, logits: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.masked_fill(~self.allowed, -math.inf), -1)
        return torch.where(self.mask, log_probs[self.state, self.action], math.nan)

    def log_flow(self, table: torch.Tensor) -> torch.Tensor:
        inside = torch.where(self.mask, table[self.state], math.nan)
        return torch.nn.functional.pad(inside, (0, 1), value=math.nan)

    def leaf_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.log_pf(logits), 0.0).sum(-1).exp()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


class TabularFlows(torch.nn.Module):
    def __init__(self, tree: PrefixTree) -> None:
        super().__init__()
        self.tree = tree
        self.table = torch.nn.Parameter(torch.zeros(tree.n_states))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.tree.log_flow(self.table)[rows]


class NetFlows(torch.nn.Module):
    def __init__(self, tree: PrefixTree) -> None:
        super().__init__()
        self.tree = tree
        vocab = int(tree.ids.max()) + 1
        self.net = PrefixFlowNet([KEY], vocab_size=vocab, embed_dim=16, hidden_dim=32)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        inputs = FlowInputs([KEY] * len(rows), self.tree.ids[rows], self.tree.mask[rows])
        return self.net(inputs)


def train_gflownet(tree, log_reward, objective, flows_kind=None, seed=0):
    """On-policy SubTB/TB/DB training; returns the final leaf distribution and log Z."""
    logits = torch.zeros(tree.allowed.shape, requires_grad=True)
    log_z = LogZTable([KEY])
    groups = [{"params": [logits], "lr": 0.05}, {"params": log_z.parameters(), "lr": 0.1}]
    flows = flows_kind(tree) if flows_kind else None
    if flows is not None:
        groups.append({"params": flows.parameters(), "lr": 0.02})
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(seed)
    keys = [KEY] * BATCH
    for _ in range(STEPS):
        rows = torch.multinomial(tree.leaf_probs(logits).detach(), BATCH, True, generator=generator)
        loss = objective(
            tree.log_pf(logits)[rows],
            tree.mask[rows],
            flows(rows) if flows is not None else None,
            log_reward=log_reward[rows],
            log_z=log_z(keys),
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tree.leaf_probs(logits).detach(), log_z(keys[:1]).item()


def train_reward_maximiser(tree, reward, seed=0):
    """REINFORCE with a batch-mean baseline and no entropy bonus, on the same batches."""
    logits = torch.zeros(tree.allowed.shape, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        log_p = torch.where(tree.mask, tree.log_pf(logits), 0.0).sum(-1)
        rows = torch.multinomial(log_p.exp().detach(), BATCH, True, generator=generator)
        advantage = reward[rows] - reward[rows].mean()
        loss = -(advantage * log_p[rows]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tree.leaf_probs(logits).detach()


@pytest.fixture(scope="module")
def binary_strings():
    """All 16 binary strings of length 4 (padded to 6) with a fixed random log-reward."""
    tree = PrefixTree(list(itertools.product([0, 1], repeat=4)), padded_length=6)
    log_reward = 1.5 * torch.randn(16, generator=torch.Generator().manual_seed(0))
    return tree, log_reward


OBJECTIVES = {
    "tb": (TrajectoryBalance(), None),
    "subtb_table": (SubTrajectoryBalance(lamda=0.9, tb_anchor_weight=0.0), TabularFlows),
    "subtb_prefix_net_default_config": (build_objective(ObjectiveConfig()), NetFlows),
    "db_table": (DetailedBalance(tb_anchor_weight=0.0), TabularFlows),
}


@pytest.fixture(scope="module")
def reward_maximiser_tv(binary_strings):
    tree, log_reward = binary_strings
    final = train_reward_maximiser(tree, log_reward.exp())
    return total_variation(final, torch.softmax(log_reward, 0))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_binary_strings_converge_to_reward_over_z(name, binary_strings, reward_maximiser_tv):
    tree, log_reward = binary_strings
    objective, flows_kind = OBJECTIVES[name]
    final, learned_log_z = train_gflownet(tree, log_reward, objective, flows_kind)
    tv = total_variation(final, torch.softmax(log_reward, 0))
    assert tv <= 0.02
    assert learned_log_z == pytest.approx(torch.logsumexp(log_reward, 0).item(), abs=0.05)
    assert reward_maximiser_tv > tv + 0.2


THINK, A, B, C, END_THINK = 0, 1, 2, 3, 4
PROGRAMS = (5, 6, 7)
REFERENCE_NEXT_TOKEN_PROB = {
    (): 0.9,  # <think>
    (THINK,): {A: 0.7, B: 0.3},
    (THINK, A): 0.9,  # </think>
    (THINK, B): 0.5,  # c
    (THINK, B, C): 0.8,  # </think>
}
PROGRAM_TOKEN_REF_PROB = 0.1  # must not count: the program is not part of the think span


def reference_token_log_probs(leaf):
    log_probs = []
    for t, token in enumerate(leaf):
        prob = REFERENCE_NEXT_TOKEN_PROB.get(leaf[:t], PROGRAM_TOKEN_REF_PROB)
        log_probs.append(math.log(prob[token] if isinstance(prob, dict) else prob))
    return log_probs


def test_latent_think_toy_matches_programs_to_reward_and_thoughts_to_reference():
    """Two think strings of different lengths, three programs, a fixed p_ref.

    With log R(z, x) = log R(x) + log p_ref(z | prompt), the program marginal is R/Z, the
    think marginal is p_ref's, and log Z is log sum R + log sum_z p_ref(z), not a count of
    think strings.
    """
    thoughts = [(THINK, A, END_THINK), (THINK, B, C, END_THINK)]
    leaves = [thought + (program,) for thought in thoughts for program in PROGRAMS]
    tree = PrefixTree(leaves, padded_length=6)
    elpd = {5: -100.0, 6: -102.0, 7: -101.0}
    program_log_reward = log_reward_from_elpd(
        [elpd[leaf[-1]] for leaf in leaves],
        [True] * len(leaves),
        reference_elpd=-101.0,
        temperature=1.0,
    )
    ref_log_probs = torch.full(tree.ids.shape, math.nan)
    for row, leaf in enumerate(leaves):
        ref_log_probs[row, : len(leaf)] = torch.tensor(reference_token_log_probs(leaf))
    span = think_span_mask(tree.ids, tree.mask, think_end_id=END_THINK)
    log_reward = latent_think_log_reward(program_log_reward, think_log_prob(ref_log_probs, span))

    final, learned_log_z = train_gflownet(
        tree, log_reward, build_objective(ObjectiveConfig()), TabularFlows
    )

    program_marginal = final.view(len(thoughts), len(PROGRAMS)).sum(0)
    program_target = torch.softmax(torch.tensor([1.0, -1.0, 0.0]), 0)
    assert total_variation(program_marginal, program_target) <= 0.02
    think_ref = torch.tensor([0.9 * 0.7 * 0.9, 0.9 * 0.3 * 0.5 * 0.8])
    think_marginal = final.view(len(thoughts), len(PROGRAMS)).sum(1)
    assert total_variation(think_marginal, think_ref / think_ref.sum()) <= 0.02
    expected_log_z = torch.logsumexp(torch.tensor([1.0, -1.0, 0.0]), 0) + think_ref.sum().log()
    assert learned_log_z == pytest.approx(expected_log_z.item(), abs=0.05)
