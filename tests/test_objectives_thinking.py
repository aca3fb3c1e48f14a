"""Think-span masks and the latent-think reward."""

from __future__ import annotations

import torch

from synthstats.objectives import latent_think_log_reward, think_log_prob, think_span_mask

END = 9


def test_think_span_runs_through_the_first_end_of_think():
    ids = torch.tensor(
        [
            [8, 1, 2, END, 5, END, 6],  # a second end token belongs to the program
            [8, 1, 2, 3, 4, 0, 0],  # never closed: everything valid is think
            [END, 5, 6, 0, 0, 0, 0],  # empty thought
            [8, 1, 0, 0, 0, END, 0],  # an end token in the padding does not count
        ]
    )
    mask = torch.arange(7) < torch.tensor([7, 5, 3, 2])[:, None]
    span = think_span_mask(ids, mask, think_end_id=END)
    assert span.int().tolist() == [
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
    ]


def test_latent_reward_adds_the_reference_log_prob_of_the_think_span_only():
    ids = torch.tensor([[8, 1, END, 5, 6], [8, END, 7, 0, 0]])
    mask = torch.arange(5) < torch.tensor([5, 3])[:, None]
    ref_log_probs = torch.tensor(
        [[-0.5, -1.0, -0.25, -7.0, -7.0], [-0.5, -2.0, -7.0, torch.nan, torch.nan]]
    )
    span = think_span_mask(ids, mask, think_end_id=END)
    think = think_log_prob(ref_log_probs, span)
    assert think.tolist() == [-1.75, -2.5]
    program_log_reward = torch.tensor([3.0, -1.0])
    assert latent_think_log_reward(program_log_reward, think).tolist() == [1.25, -3.5]
