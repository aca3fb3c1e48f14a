"""The policy-layer protocol: what the training loop may ask of any backend.

Local (transformers + PEFT) and Tinker implement the same small surface, so the loop cannot
tell them apart. Everything crosses it as token ids, plain floats and torch tensors: no
transformers or Tinker types, so a backend can live on the other side of an API.

The contract that makes a GFlowNet out of it: `sample` returns exactly the token ids it
drew, and `train_step` recomputes log P_F at temperature 1, with gradient, on exactly the
ids it is given (sampled now, replayed, or tokenised from a demonstration), never on
sampling-time scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import Tensor

from synthstats.objectives import Objective


@dataclass(frozen=True)
class Rollout:
    """One sampled completion of one prompt."""

    prompt_key: str
    prompt_ids: tuple[int, ...]
    # The sampled ids, ending with the stop token unless truncated.
    completion_ids: tuple[int, ...]
    # Decoded from completion_ids without the final stop token.
    text: str
    # True when max_new_tokens was reached before a stop token: a failure, not a program.
    truncated: bool
    # Sampling temperature (1.0 is on-policy; above 1 explores).
    temperature: float


@dataclass(frozen=True)
class TrainBatch:
    """Trajectories for one optimizer step; log_reward is already at the current temperature."""

    prompt_keys: Sequence[str]
    prompt_ids: Sequence[Sequence[int]]
    completion_ids: Sequence[Sequence[int]]
    log_reward: Tensor  # [B]
    # [B] bool: the program failed (judge, truncation or noncanonical form). A failed row
    # is left out of the balance loss; None: none failed.
    failed: Tensor | None = None
    # [B] bool: a fresh sample at temperature 1, a draw of the current policy (the failure
    # term's estimate uses these rows only). None: none.
    on_policy: Tensor | None = None

    def __post_init__(self) -> None:
        size = len(self.prompt_keys)
        sizes = (len(self.prompt_ids), len(self.completion_ids), self.log_reward.shape[0])
        if size == 0 or any(other != size for other in sizes):
            raise ValueError(
                f"a TrainBatch needs B >= 1 matching rows; got prompt_keys {size}, prompt_ids "
                f"{sizes[0]}, completion_ids {sizes[1]}, log_reward {tuple(self.log_reward.shape)}"
            )
        if self.log_reward.dim() != 1:
            raise ValueError(f"log_reward must have shape [B], got {tuple(self.log_reward.shape)}")
        for name in ("failed", "on_policy"):
            flags = getattr(self, name)
            if flags is not None and tuple(flags.shape) != (size,):
                raise ValueError(f"{name} must have shape ({size},), got {tuple(flags.shape)}")
        if any(len(ids) == 0 for ids in self.completion_ids):
            raise ValueError("every completion needs at least one token")


class PolicyBackend(Protocol):
    """Sample, score with gradient, update, and checkpoint one LoRA policy."""

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Prompt ids from chat messages via the model's chat template and thinking switch."""
        ...

    def tokenize_completion(self, text: str) -> list[int]:
        """The ids a sampled completion with this text would carry, stop token included."""
        ...

    def sample(
        self, prompt_key: str, prompt_ids: Sequence[int], temperatures: Sequence[float]
    ) -> list[Rollout]:
        """One rollout per temperature, in order."""
        ...

    def train_step(self, batch: TrainBatch, objective: Objective) -> dict[str, float]:
        """One optimizer step on objective(log_pf, mask, log_flow, log_reward=, log_z=).

        Returns metrics, at least `loss` and `log_z` (batch mean).
        """
        ...

    def reference_think_log_prob(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> Tensor:
        """[B] log p_ref(think span | prompt) under the frozen base model, for thinking: latent."""
        ...

    def save(self, directory: Path) -> None:
        """Write adapter, log Z, flow estimator, optimizer and sampling RNG into directory."""
        ...

    def load(self, directory: Path) -> None:
        """Restore exactly what save wrote, into a backend built from the same config."""
        ...
