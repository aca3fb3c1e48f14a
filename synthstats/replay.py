"""Replay buffer of scored trajectories, stored as token ids and raw ELPD scores.

An item keeps exactly the completion token ids that were sampled (or tokenised from a
demonstration), never log-probabilities: the learner recomputes log P_F under the current
policy on exactly these ids (on-sample re-scoring). It keeps the judge's ELPD, never a
tempered reward: every method that needs a reward takes a `log_reward` callable from the
caller (the reward transform at the current temperature), so annealing the temperature
never leaves stale values behind.

Policies, in one place:
- De-duplication: one item per program hash. The first item for a program is kept and
  later ones are refused; the same program scores the same, so nothing is lost but a
  second spelling of it. One exception: a judged item replaces an unjudged one (a
  demonstration's ELPD from its file), so a file's number never outlives the judge's.
- Eviction: when over capacity, the items with the lowest log R go first, the oldest
  (smallest `step_added`, then earliest insertion) first among equals. The reward
  transform is monotone in (elpd - reference) / T per env, so this order does not depend
  on the temperature, apart from ties made by its clamp.
- Sampling draws without replacement, so a replayed batch never repeats a trajectory;
  asking for more items than the buffer holds returns all of them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Source = Literal["fresh", "replay", "sft"]
SamplingMode = Literal["uniform", "prioritized", "top_k"]

_STATE_VERSION = 1


def program_hash(program: str) -> str:
    """The identity of a program for de-duplication: sha256 of its stripped text.

    For a completion without a program, hash the completion text instead, so distinct
    failures stay distinct items.
    """
    return hashlib.sha256(program.strip().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ReplayItem:
    """One scored trajectory: the prompt it answered, its exact tokens, and its ELPD."""

    prompt_key: str
    completion_ids: tuple[int, ...]
    program_hash: str
    # ELPD-LOO of the program; None when the program failed to score.
    elpd: float | None
    ok: bool
    # The judge's error kind for a failed program (e.g. "no_program", "timeout").
    error_kind: str | None
    step_added: int
    source: Source
    # False for a demonstration's ELPD taken from its file (compute_rewards=false): a judged
    # score of the same program replaces it in the buffer.
    judged: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "completion_ids", tuple(int(i) for i in self.completion_ids))
        if self.ok and (self.elpd is None or not math.isfinite(self.elpd)):
            raise ValueError(f"an ok item needs a finite elpd, got {self.elpd!r}")
        if not self.ok and self.elpd is not None:
            raise ValueError(f"a failed item carries no elpd, got {self.elpd!r}")


LogReward = Callable[[ReplayItem], float]


class ReplayBuffer:
    """Bounded, de-duplicated store of trajectories with uniform, prioritized or top-k draws."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: dict[str, ReplayItem] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ReplayItem]:
        return iter(self._items.values())

    def __contains__(self, program_hash: str) -> bool:
        return program_hash in self._items

    def add(self, items: Iterable[ReplayItem], log_reward: LogReward) -> list[ReplayItem]:
        """Insert new programs, then evict down to capacity; returns the items kept.

        An item whose program is already stored is refused, and a new item may itself be
        evicted at once when it is the lowest-reward one.
        """
        inserted = []
        for item in items:
            stored = self._items.get(item.program_hash)
            if stored is None or (item.judged and not stored.judged):
                self._items[item.program_hash] = item
                inserted.append(item)
        self._evict(log_reward)
        return [item for item in inserted if self._items.get(item.program_hash) is item]

    def _evict(self, log_reward: LogReward) -> None:
        excess = len(self._items) - self.capacity
        if excess <= 0:
            return
        items = list(self._items.values())
        rewards = [log_reward(item) for item in items]
        # Stable sort: among equal (reward, step) the earlier inserted goes first.
        order = sorted(range(len(items)), key=lambda i: (rewards[i], items[i].step_added))
        for index in order[:excess]:
            del self._items[items[index].program_hash]

    def sample(
        self,
        count: int,
        *,
        mode: SamplingMode,
        log_reward: LogReward,
        generator: np.random.Generator,
        alpha: float = 1.0,
        top_k: int | None = None,
    ) -> list[ReplayItem]:
        """Draw up to `count` distinct items.

        uniform: every item equally likely. prioritized: weights softmax(alpha * log R).
        top_k: uniform over the `top_k` items of highest log R (default `count`, i.e. the
        best items; ties go to the newest). `log_reward` is the reward transform at the
        current temperature; `generator` makes the draw reproducible on resume.
        """
        items = list(self._items.values())
        count = min(count, len(items))
        if count <= 0:
            return []
        if mode == "uniform":
            chosen = generator.choice(len(items), size=count, replace=False)
        elif mode == "prioritized":
            scores = alpha * np.array([log_reward(item) for item in items], dtype=np.float64)
            weights = np.exp(scores - scores.max())
            # An item whose weight underflows to zero can never be drawn.
            count = min(count, int(np.count_nonzero(weights)))
            chosen = generator.choice(
                len(items), size=count, replace=False, p=weights / weights.sum()
            )
        elif mode == "top_k":
            keep = min(top_k or count, len(items))
            rewards = [log_reward(item) for item in items]
            ranked = sorted(
                range(len(items)), key=lambda i: (rewards[i], items[i].step_added), reverse=True
            )
            chosen = generator.choice(ranked[:keep], size=min(count, keep), replace=False)
        else:
            raise ValueError(f"unknown replay sampling mode {mode!r}")
        return [items[int(index)] for index in chosen]

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON- and torch.save-safe), in insertion order."""
        return {
            "version": _STATE_VERSION,
            "capacity": self.capacity,
            "items": [
                {**asdict(item), "completion_ids": list(item.completion_ids)} for item in self
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"replay state version {state.get('version')!r} is not {_STATE_VERSION}"
            )
        self.capacity = int(state["capacity"])
        self._items = {}
        for fields in state["items"]:
            item = ReplayItem(**fields)
            self._items[item.program_hash] = item
