"""Replay buffer: stored fields, de-duplication, eviction, sampling modes, state round trip."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch

from synthstats.replay import ReplayBuffer, ReplayItem, program_hash

FAILURE_LOG_REWARD = -25.0


def item(name: str, elpd: float | None, step: int = 0, source: str = "fresh") -> ReplayItem:
    return ReplayItem(
        prompt_key="dugongs",
        completion_ids=(len(name), 7, 151645),
        program_hash=program_hash(name),
        elpd=elpd,
        ok=elpd is not None,
        error_kind=None if elpd is not None else "no_program",
        step_added=step,
        source=source,
    )


def log_reward_at(temperature: float):
    """A stand-in reward transform: clamp(elpd / T) with a fixed failure value."""

    def log_reward(entry: ReplayItem) -> float:
        if entry.elpd is None:
            return FAILURE_LOG_REWARD
        return float(np.clip(entry.elpd / temperature, -20.0, 10.0))

    return log_reward


def test_item_keeps_token_ids_and_elpd_but_no_reward_or_log_probs():
    fields = {field.name for field in dataclasses.fields(ReplayItem)}
    assert fields == {
        "prompt_key",
        "completion_ids",
        "program_hash",
        "elpd",
        "ok",
        "error_kind",
        "step_added",
        "source",
        "judged",
    }
    stored = item("a", -3.5)
    assert stored.completion_ids == (1, 7, 151645)


def test_item_rejects_inconsistent_scores():
    with pytest.raises(ValueError, match="finite elpd"):
        dataclasses.replace(item("a", -1.0), elpd=None)
    with pytest.raises(ValueError, match="finite elpd"):
        dataclasses.replace(item("a", -1.0), elpd=float("nan"))
    with pytest.raises(ValueError, match="no elpd"):
        dataclasses.replace(item("a", None), elpd=-1.0)


def test_program_hash_ignores_surrounding_whitespace_only():
    assert program_hash("x = 1\n") == program_hash("  x = 1")
    assert program_hash("x = 1") != program_hash("x = 2")


def test_duplicate_program_is_refused_and_first_kept():
    buffer = ReplayBuffer(capacity=10)
    first = item("same", -2.0, step=1)
    later = dataclasses.replace(first, completion_ids=(9, 9), step_added=5)
    assert buffer.add([first], log_reward_at(1.0)) == [first]
    assert buffer.add([later, item("other", -1.0)], log_reward_at(1.0)) == [item("other", -1.0)]
    assert len(buffer) == 2
    assert next(iter(buffer)) is first
    assert program_hash("same") in buffer


def test_eviction_drops_lowest_reward_then_oldest():
    buffer = ReplayBuffer(capacity=3)
    log_reward = log_reward_at(1.0)
    buffer.add([item("good", 5.0, 0), item("fail_old", None, 0), item("mid", 0.0, 0)], log_reward)
    kept = buffer.add([item("fail_new", None, 1)], log_reward)
    assert kept == [item("fail_new", None, 1)]
    hashes = {entry.program_hash for entry in buffer}
    assert hashes == {program_hash(n) for n in ("good", "mid", "fail_new")}
    kept = buffer.add([item("worse", -15.0, 2)], log_reward)
    assert kept == [item("worse", -15.0, 2)]
    assert program_hash("fail_new") not in buffer
    # A new item below everything stored is evicted at once.
    assert buffer.add([item("worst", -18.0, 3)], log_reward) == []
    assert len(buffer) == 3


def test_uniform_sampling_is_seeded_and_without_replacement():
    buffer = ReplayBuffer(capacity=100)
    buffer.add([item(str(i), float(-i)) for i in range(20)], log_reward_at(1.0))
    draw = buffer.sample(
        8, mode="uniform", log_reward=log_reward_at(1.0), generator=np.random.default_rng(3)
    )
    again = buffer.sample(
        8, mode="uniform", log_reward=log_reward_at(1.0), generator=np.random.default_rng(3)
    )
    assert draw == again
    assert len({entry.program_hash for entry in draw}) == 8
    everything = buffer.sample(
        50, mode="uniform", log_reward=log_reward_at(1.0), generator=np.random.default_rng(0)
    )
    assert len(everything) == 20


def test_prioritized_sampling_follows_softmax_of_alpha_log_reward():
    buffer = ReplayBuffer(capacity=10)
    buffer.add([item("high", 1.0), item("low", 0.0)], log_reward_at(1.0))
    generator = np.random.default_rng(0)
    alpha = 2.0
    counts = Counter(
        buffer.sample(
            1, mode="prioritized", log_reward=log_reward_at(1.0), generator=generator, alpha=alpha
        )[0].program_hash
        for _ in range(4000)
    )
    expected_high = 1.0 / (1.0 + np.exp(-alpha * 1.0))
    assert counts[program_hash("high")] / 4000 == pytest.approx(expected_high, abs=0.03)


def test_prioritized_sampling_reads_rewards_at_the_callers_temperature():
    """The buffer stores ELPD only: a hotter transform flattens the draw."""
    buffer = ReplayBuffer(capacity=10)
    buffer.add([item("high", 4.0), item("low", 0.0)], log_reward_at(1.0))

    def share_high(temperature: float) -> float:
        generator = np.random.default_rng(1)
        hits = sum(
            buffer.sample(
                1, mode="prioritized", log_reward=log_reward_at(temperature), generator=generator
            )[0].program_hash
            == program_hash("high")
            for _ in range(2000)
        )
        return hits / 2000

    assert share_high(1.0) > 0.95
    assert share_high(100.0) == pytest.approx(0.5, abs=0.05)


def test_top_k_draws_only_from_the_best():
    buffer = ReplayBuffer(capacity=100)
    buffer.add([item(str(i), float(-i)) for i in range(10)] + [item("bad", None)], log_reward_at(1))
    best = {program_hash("0"), program_hash("1"), program_hash("2")}
    generator = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        draw = buffer.sample(
            2, mode="top_k", log_reward=log_reward_at(1.0), generator=generator, top_k=3
        )
        seen.update(entry.program_hash for entry in draw)
    assert seen == best
    top_two = buffer.sample(2, mode="top_k", log_reward=log_reward_at(1.0), generator=generator)
    assert {entry.program_hash for entry in top_two} == {program_hash("0"), program_hash("1")}


def test_empty_buffer_and_unknown_mode():
    buffer = ReplayBuffer(capacity=4)
    generator = np.random.default_rng(0)
    assert (
        buffer.sample(3, mode="uniform", log_reward=log_reward_at(1.0), generator=generator) == []
    )
    buffer.add([item("a", 0.0)], log_reward_at(1.0))
    with pytest.raises(ValueError, match="unknown replay sampling mode"):
        buffer.sample(1, mode="greedy", log_reward=log_reward_at(1.0), generator=generator)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=0)


def test_state_round_trip_is_identical_through_json_and_torch(tmp_path):
    buffer = ReplayBuffer(capacity=5)
    buffer.add(
        [item("a", -1.25, 0, "sft"), item("b", None, 1), item("c", 3.0e-7, 2, "replay")],
        log_reward_at(1.0),
    )
    state = buffer.state_dict()

    restored = ReplayBuffer(capacity=1)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.capacity == 5
    assert list(restored) == list(buffer)

    torch.save(state, tmp_path / "replay.pt")
    from_torch = ReplayBuffer(capacity=1)
    from_torch.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    assert list(from_torch) == list(buffer)

    def draw(source: ReplayBuffer) -> list[ReplayItem]:
        return source.sample(
            2, mode="prioritized", log_reward=log_reward_at(1.0), generator=np.random.default_rng(9)
        )

    assert draw(restored) == draw(buffer)


def test_load_rejects_unknown_version():
    with pytest.raises(ValueError, match="version"):
        ReplayBuffer(capacity=1).load_state_dict({"version": 99, "capacity": 1, "items": []})
