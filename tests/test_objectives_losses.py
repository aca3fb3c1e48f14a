"""TB, SubTB and DB against slow loop references, plus masks, signs, scale and speed."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synthstats.config import ObjectiveConfig
from synthstats.objectives import (
    DetailedBalance,
    SubTrajectoryBalance,
    TrajectoryBalance,
    build_objective,
    db_loss,
    subtb_loss,
    tb_loss,
)
from synthstats.objectives.geometric import discounted_cumsum

GARBAGE = float("nan")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: a second thread only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_loss(log_pf, mask, log_flow, log_reward, log_z, weight, huber_delta=None):
    """Mean over trajectories of sum_{i<j} w(i,j,L) delta_ij^2 / sum w, by explicit loops.

    An empty trajectory (L = 0) has the single residual log Z - log R.
    """
    per_trajectory = []
    for b in range(log_pf.shape[0]):
        length = int(mask[b].sum())

        def flow(t, b=b, length=length):
            if t == 0:
                return log_z[b]
            if t == length:
                return log_reward[b]
            return log_flow[b, t]

        weighted, total = 0.0, 0.0
        for i in range(length + 1):
            for j in range(i + 1, length + 1):
                w = weight(i, j, length)
                if w == 0:
                    continue
                path = sum(log_pf[b, t] for t in range(i, j))
                delta = flow(i) + path - flow(j)
                weighted = weighted + w * delta**2
                total += w
        mean_square = weighted / total if total else (log_z[b] - log_reward[b]) ** 2
        per_trajectory.append(reference_penalty(mean_square, huber_delta))
    return sum(per_trajectory) / len(per_trajectory)


def reference_penalty(mean_square, huber_delta):
    if huber_delta is None or mean_square <= huber_delta**2:
        return mean_square
    return 2 * huber_delta * mean_square.sqrt() - huber_delta**2


def tb_weight(i, j, length):
    return 1.0 if (i, j) == (0, length) else 0.0


def db_weight(i, j, length):
    return 1.0 if j == i + 1 else 0.0


def subtb_weight(lamda):
    return lambda i, j, length: lamda ** (j - i)


def make_batch(lengths, steps, seed, garbage=GARBAGE, dtype=torch.float64):
    """Random ragged batch; every position the losses must ignore holds `garbage`."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    mask = torch.arange(steps) < torch.tensor(lengths)[:, None]
    log_pf = -3 * torch.rand(batch, steps, generator=generator, dtype=dtype)
    log_flow = 4 * torch.randn(batch, steps + 1, generator=generator, dtype=dtype)
    positions = torch.arange(steps + 1)
    ignored_flow = (positions == 0) | (positions >= torch.tensor(lengths)[:, None])
    return {
        "log_pf": torch.where(mask, log_pf, garbage),
        "mask": mask,
        "log_flow": torch.where(ignored_flow, garbage, log_flow),
        "log_reward": 5 * torch.randn(batch, generator=generator, dtype=dtype),
        "log_z": 5 * torch.randn(batch, generator=generator, dtype=dtype),
    }


def leaves(batch):
    return {
        name: value.clone().requires_grad_(value.is_floating_point())
        for name, value in batch.items()
    }


LOSSES = {
    "tb": (lambda b, **kw: tb_loss(b["log_pf"], b["mask"], **_ends(b), **kw), lambda _: tb_weight),
    "subtb": (
        lambda b, lamda=0.9, **kw: subtb_loss(
            b["log_pf"], b["mask"], b["log_flow"], **_ends(b), lamda=lamda, **kw
        ),
        subtb_weight,
    ),
    "db": (
        lambda b, **kw: db_loss(b["log_pf"], b["mask"], b["log_flow"], **_ends(b), **kw),
        lambda _: db_weight,
    ),
}


def _ends(batch):
    return {"log_reward": batch["log_reward"], "log_z": batch["log_z"]}


def _call(name, batch, lamda, huber_delta):
    fast, _ = LOSSES[name]
    extra = {"lamda": lamda} if name == "subtb" else {}
    return fast(batch, huber_delta=huber_delta, **extra)


ragged_batches = st.integers(1, 9).flatmap(
    lambda steps: st.tuples(
        st.just(steps),
        st.lists(st.integers(0, steps), min_size=1, max_size=4),
        st.integers(0, 2**31 - 1),
    )
)


@settings(max_examples=150, deadline=None)
@given(
    shape=ragged_batches,
    name=st.sampled_from(sorted(LOSSES)),
    lamda=st.floats(0.05, 1.0),
    huber_delta=st.none() | st.floats(0.5, 5.0),
)
def test_losses_and_gradients_match_reference_loops(shape, name, lamda, huber_delta):
    steps, lengths, seed = shape
    fast_inputs = leaves(make_batch(lengths, steps, seed))
    ref_inputs = leaves(make_batch(lengths, steps, seed))
    fast = _call(name, fast_inputs, lamda, huber_delta)
    _, weight_for = LOSSES[name]
    ref = reference_loss(
        ref_inputs["log_pf"],
        ref_inputs["mask"],
        ref_inputs["log_flow"],
        ref_inputs["log_reward"],
        ref_inputs["log_z"],
        weight_for(lamda),
        huber_delta,
    )
    assert fast.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-9)
    fast.backward()
    ref.backward()
    for key in ("log_pf", "log_flow", "log_reward", "log_z"):
        got = fast_inputs[key].grad
        if got is None:
            assert name == "tb" and key == "log_flow"
            continue
        expected = ref_inputs[key].grad
        expected = torch.zeros_like(got) if expected is None else expected
        assert torch.isfinite(got).all(), key
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10, msg=key)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -1e30, 0.0])
def test_values_at_masked_positions_do_not_matter(name, garbage):
    lengths, steps = [5, 1, 0, 7], 7
    clean = leaves(make_batch(lengths, steps, seed=3, garbage=123.0))
    dirty = leaves(make_batch(lengths, steps, seed=3, garbage=garbage))
    loss_clean, loss_dirty = (_call(name, b, 0.8, None) for b in (clean, dirty))
    assert loss_dirty.item() == loss_clean.item()
    loss_clean.backward()
    loss_dirty.backward()
    for key in ("log_pf", "log_flow"):
        if clean[key].grad is None:
            continue
        torch.testing.assert_close(dirty[key].grad, clean[key].grad, rtol=0, atol=0)
    ignored_pf = ~clean["mask"]
    assert (dirty["log_pf"].grad[ignored_pf] == 0).all()


def test_tb_equals_subtb_with_only_the_whole_trajectory_pair():
    batch = make_batch([4, 6, 1], 6, seed=11)
    fast_tb = tb_loss(batch["log_pf"], batch["mask"], **_ends(batch))
    only_whole = reference_loss(
        batch["log_pf"],
        batch["mask"],
        batch["log_flow"],
        batch["log_reward"],
        batch["log_z"],
        tb_weight,
    )
    assert fast_tb.item() == pytest.approx(only_whole.item(), rel=1e-12)


@pytest.mark.parametrize("lamda", [0.1, 0.9, 1.0])
def test_trajectories_of_at_most_one_step_make_all_three_losses_agree(lamda):
    batch = make_batch([1, 0, 1], 3, seed=5)
    tb = tb_loss(batch["log_pf"], batch["mask"], **_ends(batch))
    subtb = subtb_loss(
        batch["log_pf"], batch["mask"], batch["log_flow"], **_ends(batch), lamda=lamda
    )
    db = db_loss(batch["log_pf"], batch["mask"], batch["log_flow"], **_ends(batch))
    torch.testing.assert_close(subtb, tb)
    torch.testing.assert_close(db, tb)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_an_under_sampled_high_reward_trajectory_is_pushed_up(name):
    """Flows balanced everywhere except that R is e^5 above what the policy delivers.

    Gradient descent must raise log P_F along the trajectory (DB: the last step, the only
    unbalanced one) and never lower log Z; a sign error (the bug of an earlier public
    attempt) pushes high-reward programs down.
    """
    steps = 6
    log_pf = torch.log(torch.full((1, steps), 0.5, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(1, steps, dtype=torch.bool)
    log_z = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    balanced = log_z.detach() + torch.nn.functional.pad(log_pf.detach().cumsum(-1), (1, 0))
    log_reward = balanced[:, -1] + 5.0
    batch = {"log_pf": log_pf, "mask": mask, "log_flow": balanced, "log_reward": log_reward}
    batch["log_z"] = log_z
    _call(name, batch, 0.9, None).backward()
    assert (log_pf.grad <= 0).all() and log_pf.grad[0, -1] < 0
    assert (log_z.grad <= 0).all()


def test_subtb_matches_all_pairs_reference_at_lm_length_in_float32():
    """Prefix log-probabilities of -3000 nats: the running-sum expansion must not cancel."""
    length, lamda = 1500, 0.95
    generator = torch.Generator().manual_seed(0)
    log_pf = -2 - 2 * torch.rand(1, length, generator=generator)
    prefix = torch.nn.functional.pad(log_pf.double().cumsum(-1), (1, 0))
    noise = 0.3 * torch.randn(1, length + 1, generator=generator, dtype=torch.float64)
    log_flow = (prefix + noise).float()
    log_reward = (prefix[:, -1] + 0.7).float()
    log_z = torch.tensor([0.2])
    mask = torch.ones(1, length, dtype=torch.bool)
    fast = subtb_loss(log_pf, mask, log_flow, log_reward=log_reward, log_z=log_z, lamda=lamda)

    flows = log_flow.double()[0].clone()
    flows[0], flows[-1] = log_z.double(), log_reward.double()
    potential = flows - prefix[0]
    gaps = torch.arange(length + 1)[None, :] - torch.arange(length + 1)[:, None]
    weights = torch.where(gaps > 0, lamda ** gaps.clamp(min=0).double(), 0.0)
    deltas = potential[:, None] - potential[None, :]
    expected = (weights * deltas.square()).sum() / weights.sum()
    assert fast.dtype == torch.float32
    assert fast.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("lamda", [0.5, 0.9, 0.999])
def test_subtb_is_fast_and_finite_at_batch_8_length_4096(lamda):
    batch, steps = 8, 4096
    log_pf = (-3 * torch.rand(batch, steps)).requires_grad_()
    log_flow = (10 * torch.randn(batch, steps + 1)).requires_grad_()
    mask = torch.arange(steps) < torch.tensor([4096, 4000, 3000, 2048, 1024, 100, 4096, 1])[:, None]
    ends = {"log_reward": torch.randn(batch), "log_z": torch.randn(batch, requires_grad=True)}
    subtb_loss(log_pf, mask, log_flow, **ends, lamda=lamda).backward()  # warm-up
    start = time.perf_counter()
    loss = subtb_loss(log_pf, mask, log_flow, **ends, lamda=lamda)
    loss.backward()
    elapsed = time.perf_counter() - start
    assert math.isfinite(loss.item())
    assert torch.isfinite(log_pf.grad).all() and torch.isfinite(log_flow.grad).all()
    assert elapsed < 0.25, f"SubTB forward+backward took {elapsed:.2f} s"


def test_inputs_are_validated():
    batch = make_batch([3, 2], 4, seed=0)
    ends = _ends(batch)
    with pytest.raises(ValueError, match="lamda"):
        subtb_loss(batch["log_pf"], batch["mask"], batch["log_flow"], **ends, lamda=0.0)
    with pytest.raises(ValueError, match="log_flow"):
        db_loss(batch["log_pf"], batch["mask"], batch["log_flow"][:, :-1], **ends)
    with pytest.raises(ValueError, match="log_z"):
        tb_loss(batch["log_pf"], batch["mask"], log_reward=ends["log_reward"], log_z=torch.zeros(1))
    with pytest.raises(ValueError, match="mask"):
        tb_loss(batch["log_pf"], batch["mask"].float(), **ends)
    left_padded = batch["mask"].flip(-1)
    with pytest.raises(ValueError, match="valid tokens first"):
        tb_loss(batch["log_pf"], left_padded, **ends)
    with pytest.raises(ValueError, match="huber_delta"):
        tb_loss(batch["log_pf"], batch["mask"], **ends, huber_delta=0.0)
    with pytest.raises(TypeError):
        tb_loss(batch["log_pf"], batch["mask"], ends["log_reward"], ends["log_z"])


def test_huber_tb_is_the_huber_loss_of_the_residual():
    batch = make_batch([3, 3, 3, 3], 3, seed=8)
    residual = batch["log_z"] + batch["log_pf"].sum(-1) - batch["log_reward"]
    delta = 1.5
    expected = 2 * torch.nn.functional.huber_loss(residual, torch.zeros_like(residual), delta=delta)
    got = tb_loss(batch["log_pf"], batch["mask"], **_ends(batch), huber_delta=delta)
    torch.testing.assert_close(got, expected)


def test_objectives_add_the_weighted_tb_anchor():
    batch = make_batch([4, 2, 5], 5, seed=2)
    args = (batch["log_pf"], batch["mask"], batch["log_flow"])
    tb = tb_loss(batch["log_pf"], batch["mask"], **_ends(batch))
    subtb = subtb_loss(*args, **_ends(batch), lamda=0.7)
    db = db_loss(*args, **_ends(batch))
    anchored = SubTrajectoryBalance(lamda=0.7, tb_anchor_weight=2.5)(*args, **_ends(batch))
    torch.testing.assert_close(anchored, subtb + 2.5 * tb)
    plain = SubTrajectoryBalance(lamda=0.7, tb_anchor_weight=0.0)(*args, **_ends(batch))
    torch.testing.assert_close(plain, subtb)
    torch.testing.assert_close(
        DetailedBalance(tb_anchor_weight=0.5)(*args, **_ends(batch)), db + 0.5 * tb
    )
    torch.testing.assert_close(TrajectoryBalance()(*args, **_ends(batch)), tb)
    with pytest.raises(ValueError, match="tb_anchor_weight"):
        DetailedBalance(tb_anchor_weight=-1.0)


@pytest.mark.parametrize(
    ("loss", "kind", "needs_flow"),
    [
        ("tb", TrajectoryBalance, False),
        ("subtb", SubTrajectoryBalance, True),
        ("db", DetailedBalance, True),
    ],
)
def test_build_objective_reads_the_config(loss, kind, needs_flow):
    cfg = ObjectiveConfig(loss=loss, lamda=0.8, tb_anchor_weight=0.3, huber_delta=4.0)
    objective = build_objective(cfg)
    assert isinstance(objective, kind)
    assert objective.needs_flow is needs_flow
    assert objective.huber_delta == 4.0
    if loss == "subtb":
        assert objective.lamda == 0.8
    if needs_flow:
        assert objective.tb_anchor_weight == 0.3


def test_build_objective_rejects_unknown_losses():
    with pytest.raises(ValueError, match="unknown loss"):
        build_objective(ObjectiveConfig(loss="ppo"))


@pytest.mark.parametrize("length", [1, 63, 64, 65, 4161])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9, 1.0])
def test_discounted_cumsum_matches_a_running_loop(length, ratio):
    """Lengths around the chunk size and past two levels of chunk recursion."""
    generator = torch.Generator().manual_seed(length)
    values = torch.randn(2, length, generator=generator, dtype=torch.float64)
    running = torch.zeros(2, dtype=torch.float64)
    expected = torch.empty_like(values)
    for j in range(length):
        running = ratio * running + values[:, j]
        expected[:, j] = running
    torch.testing.assert_close(discounted_cumsum(values, ratio), expected, rtol=1e-12, atol=1e-9)
