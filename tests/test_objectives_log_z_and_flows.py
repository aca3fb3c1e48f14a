"""log Z table and VarGrad estimate; the two flow estimators."""

from __future__ import annotations

import pytest
import torch

from synthstats.objectives import (
    FlowInputs,
    HiddenStateFlowHead,
    LogZTable,
    PrefixFlowNet,
    tb_loss,
    vargrad_log_z,
)


def test_log_z_table_has_one_shape_1_entry_per_prompt_and_no_0_dim_parameters():
    table = LogZTable(["eight_schools", "radon", "eight_schools"], init=1.5)
    assert table.index.keys == ("eight_schools", "radon")
    assert table.values.shape == (2, 1)
    assert all(p.dim() > 0 for p in table.parameters())
    assert table(["radon", "eight_schools", "radon"]).tolist() == [1.5, 1.5, 1.5]


def test_log_z_table_gradient_reaches_only_the_rows_used():
    table = LogZTable(["a", "b", "c"])
    table(["c", "a", "c"]).sum().backward()
    assert table.values.grad[:, 0].tolist() == [1.0, 0.0, 2.0]


def test_log_z_table_checkpoint_reloads_whatever_order_the_keys_come_in():
    table = LogZTable(["b", "a"])
    with torch.no_grad():
        table.values.copy_(torch.tensor([[3.0], [-2.0]]))
    reloaded = LogZTable(["a", "b"])
    reloaded.load_state_dict(table.state_dict())
    assert reloaded(["a", "b"]).tolist() == table(["a", "b"]).tolist() == [3.0, -2.0]


def test_log_z_table_rejects_unknown_prompts():
    with pytest.raises(KeyError, match="missing"):
        LogZTable(["a"])(["a", "missing"])
    with pytest.raises(ValueError):
        LogZTable([])


def test_vargrad_turns_tb_into_the_within_prompt_variance():
    log_pf = torch.tensor(
        [[-1.0, -2.0, torch.nan], [-0.5, torch.nan, torch.nan], [-3.0, -1.0, -1.0]]
    )
    mask = ~log_pf.isnan()
    log_pf = log_pf.requires_grad_()
    log_reward = torch.tensor([0.0, 1.0, -2.0])
    keys = ["p", "q", "p"]
    log_z = vargrad_log_z(log_pf, mask, log_reward=log_reward, prompt_keys=keys)
    # log R - sum log_pf: p -> 3.0 and 3.0, q -> 1.5
    assert log_z.tolist() == [3.0, 1.5, 3.0]
    assert not log_z.requires_grad
    assert tb_loss(log_pf, mask, log_reward=log_reward, log_z=log_z).item() == 0.0

    log_reward = torch.tensor([1.0, 1.0, -2.0])  # p -> 4.0 and 3.0: mean 3.5, deviations 0.5
    log_z = vargrad_log_z(log_pf, mask, log_reward=log_reward, prompt_keys=keys)
    loss = tb_loss(log_pf, mask, log_reward=log_reward, log_z=log_z)
    assert loss.item() == pytest.approx((0.25 + 0.0 + 0.25) / 3)
    loss.backward()
    assert torch.isfinite(log_pf.grad).all()
    assert log_pf.grad[0, 0] < 0 < log_pf.grad[2, 0]  # descent raises the better one


def hidden_inputs(batch=2, steps=5, hidden=8, dtype=torch.float32):
    mask = torch.arange(steps) < torch.tensor([steps, 2])[:batch, None]
    return FlowInputs(
        prompt_keys=["a"] * batch,
        completion_ids=torch.randint(0, 10, (batch, steps)),
        mask=mask,
        hidden_states=torch.randn(batch, steps + 1, hidden, dtype=dtype, requires_grad=True),
    )


def test_hidden_state_head_maps_states_to_log_flows_with_gradient_into_the_lm():
    head = HiddenStateFlowHead(hidden_size=8, width=16)
    inputs = hidden_inputs()
    log_flow = head(inputs)
    assert log_flow.shape == (2, 6)
    log_flow.sum().backward()
    assert inputs.hidden_states.grad.abs().sum() > 0
    assert head(hidden_inputs(dtype=torch.bfloat16)).dtype == torch.float32
    with pytest.raises(ValueError, match="hidden_states"):
        head(
            FlowInputs(
                ["a"], torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)
            )
        )


def prefix_inputs(ids, keys=None, length=None):
    ids = torch.as_tensor(ids)
    mask = torch.arange(ids.shape[1]) < (ids.shape[1] if length is None else length)
    return FlowInputs(keys or ["a"] * len(ids), ids, mask.expand(ids.shape))


def test_prefix_net_reads_only_the_prefix_and_the_prompt():
    torch.manual_seed(0)
    net = PrefixFlowNet(["a", "b"], vocab_size=10)
    base = net(prefix_inputs([[1, 2, 3, 4]]))
    assert base.shape == (1, 5)
    changed = net(prefix_inputs([[1, 2, 7, 4]]))  # a_3 changed: s_0..s_2 are unchanged
    torch.testing.assert_close(changed[:, :3], base[:, :3])
    assert not torch.allclose(changed[:, 3:], base[:, 3:])
    other_prompt = net(prefix_inputs([[1, 2, 3, 4]], keys=["b"]))
    assert not torch.allclose(other_prompt[:, 0], base[:, 0])
    padded = net(
        prefix_inputs([[1, 2, 3, 4, -1, 99_999]], length=4)
    )  # masked ids are never embedded
    torch.testing.assert_close(padded[:, :5], base)


@pytest.mark.parametrize(
    ("make", "inputs"),
    [
        (lambda: HiddenStateFlowHead(hidden_size=8, width=16), hidden_inputs()),
        (lambda: PrefixFlowNet(["a"], vocab_size=10), hidden_inputs()),
    ],
)
def test_flow_estimators_checkpoint_and_have_no_0_dim_parameters(make, inputs):
    torch.manual_seed(1)
    estimator = make()
    with torch.no_grad():
        estimator.drift.slope.fill_(-2.0)
    assert all(p.dim() > 0 for p in estimator.parameters())
    reloaded = make()
    reloaded.load_state_dict(estimator.state_dict())
    torch.testing.assert_close(reloaded(inputs), estimator(inputs))


def test_flow_estimators_drift_linearly_with_position():
    torch.manual_seed(2)
    net = PrefixFlowNet(["a"], vocab_size=10)
    inputs = prefix_inputs([[1, 2, 3]])
    before = net(inputs)
    with torch.no_grad():
        net.drift.slope.fill_(-3.0)
    torch.testing.assert_close(net(inputs) - before, torch.tensor([[0.0, -3.0, -6.0, -9.0]]))
