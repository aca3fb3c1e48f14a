"""Discounted prefix sums in O(n) without negative powers of the ratio.

SubTB needs, at every position j, sums of the form sum_{i<=j} lamda^(j-i) x_i. The textbook
trick lamda^j * cumsum(lamda^(-i) x_i) overflows at LM lengths (0.9^-4096 is 1e187), so the
sum is computed in chunks: inside a chunk with a small lower-triangular matrix of
lamda^(j-i) (powers in [0, 1]), across chunks by recursing on the chunk totals with ratio
lamda^CHUNK. Work is O(n * CHUNK); every power used is <= 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 64


def _decay_matrix(size: int, ratio: float, like: Tensor) -> Tensor:
    """[size, size] with ratio^(j-i) at (j, i) for i <= j and 0 above the diagonal."""
    steps = torch.arange(size, device=like.device)
    gaps = steps[:, None] - steps[None, :]
    base = torch.tensor(ratio, dtype=like.dtype, device=like.device)
    return torch.where(gaps >= 0, base ** gaps.clamp(min=0), torch.zeros((), dtype=like.dtype))


def discounted_cumsum(x: Tensor, ratio: float) -> Tensor:
    """out[..., j] = sum_{i <= j} ratio^(j - i) * x[..., i], for 0 <= ratio <= 1."""
    length = x.shape[-1]
    if length <= CHUNK:
        return x @ _decay_matrix(length, ratio, x).T
    n_chunks = -(-length // CHUNK)
    chunks = F.pad(x, (0, n_chunks * CHUNK - length)).unflatten(-1, (n_chunks, CHUNK))
    within = chunks @ _decay_matrix(CHUNK, ratio, x).T
    totals_through_chunk = discounted_cumsum(within[..., -1], ratio**CHUNK)
    carried_in = F.pad(totals_through_chunk[..., :-1], (1, 0))
    offsets = torch.arange(1, CHUNK + 1, device=x.device)
    carry_decay = torch.tensor(ratio, dtype=x.dtype, device=x.device) ** offsets
    combined = within + carried_in.unsqueeze(-1) * carry_decay
    return combined.flatten(-2)[..., :length]


def discounted_sum_before(x: Tensor, ratio: float) -> Tensor:
    """out[..., j] = sum_{i < j} ratio^(j - i) * x[..., i] (strictly earlier positions)."""
    inclusive = discounted_cumsum(x, ratio)
    return ratio * F.pad(inclusive[..., :-1], (1, 0))
