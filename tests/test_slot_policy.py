"""policy=slot: masked sampling and P_F keep all probability inside the program space and
its failure edits, the enumerated log-probabilities are the sampler's, and the shared
objective with the failure term teaches it p*(. | valid) and drives failure mass down."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from synthstats.backends import TrainBatch, build_backend
from synthstats.backends.slot import BOS, EDITS, EOS, SlotBackend
from synthstats.config import resolve
from synthstats.envs.spaces import get_space
from synthstats.eval.exact import space_metrics
from synthstats.eval.metrics import total_variation
from synthstats.eval.target import space_log_rewards, space_reference_elpd
from synthstats.judge.extract import extract_program
from synthstats.judge.scoring import prepare
from synthstats.judge.space_scores import load_scores
from synthstats.objectives import build_objective

ENV = "dugongs"


def make_backend(*overrides: str) -> SlotBackend:
    config = resolve(["policy=slot", f"env={ENV}", "runner.train.learning_rate=0.001", *overrides])
    backend = build_backend(config)
    assert isinstance(backend, SlotBackend)
    return backend


@pytest.fixture(scope="module")
def skewed() -> SlotBackend:
    """A backend whose distribution is far from uniform, so sampling checks mean something."""
    backend = make_backend()
    with torch.no_grad():
        backend.module.lm.lm_head.weight.mul_(40.0)
    return backend


def completions(backend: SlotBackend) -> list[str]:
    """Every completion the policy can write: each program, then its failure edits."""
    return [backend.vocabulary.text_of(path) for path in backend.vocabulary.paths()]


def probabilities(backend: SlotBackend) -> np.ndarray:
    log_p = backend.exact_log_probs()
    return np.exp([log_p[text] for text in completions(backend)])


def test_enumeration_holds_all_probability(skewed):
    exact = probabilities(skewed)
    assert exact.shape == (len(get_space(ENV)) * len(EDITS),)
    assert len(set(completions(skewed))) == exact.size
    assert exact.sum() == pytest.approx(1.0, abs=1e-5)
    uniform = np.full(exact.size, 1 / exact.size)
    assert total_variation(uniform, exact) > 0.3  # the checks below see a skewed policy


def test_masked_logits_give_invalid_tokens_no_probability(skewed):
    valid = skewed.vocabulary.valid
    logits = torch.randn(valid.shape[0], valid.shape[1])
    probs = torch.softmax(skewed.module.masked_logits(logits, torch.arange(valid.shape[0])), -1)
    assert torch.all(probs[~valid] == 0)
    assert torch.allclose(probs.sum(-1), torch.ones(valid.shape[0]))
    # each step admits exactly its slot's choices, then the edits, and the last step only EOS
    space = get_space(ENV)
    sizes = [len(slot.choices) for slot in space.slots]
    assert valid.sum(-1).tolist() == [*sizes, len(EDITS), 1]
    assert valid[-1, EOS]


def test_samples_are_programs_of_the_space_or_failures_the_gate_refuses(skewed):
    space = get_space(ENV)
    failed = 0
    for temperature in (0.5, 1.0, 5.0):
        for rollout in skewed.sample(ENV, [BOS], [temperature] * 64):
            if rollout.text in space.completions:
                assert extract_program(rollout.text) == space.render(space.path_of(rollout.text))
            else:
                failed += 1
                assert not prepare(rollout.text).ok  # refused before any program runs
            assert list(rollout.completion_ids) == skewed.tokenize_completion(rollout.text)
            assert rollout.completion_ids[-1] == EOS and not rollout.truncated
            assert rollout.temperature == temperature
    assert failed > 0


def test_sample_frequencies_match_exact_probabilities(skewed):
    texts = [rollout.text for rollout in skewed.sample(ENV, [BOS], [1.0] * 4000)]
    counts = Counter(texts)
    frequencies = np.array([counts[text] / len(texts) for text in completions(skewed)])
    # 4000 draws over 36 programs: sampling noise in TV is about 0.03
    assert total_variation(frequencies, probabilities(skewed)) < 0.06


def test_exact_log_probs_match_per_step_masked_softmax_of_the_raw_model(skewed):
    """P_F recomputed independently: one forward per prefix, mask, renormalise."""
    exact = skewed.exact_log_probs()
    rollouts = skewed.sample(ENV, [BOS], [1.0] * 6)
    valid = skewed.vocabulary.valid
    for rollout in rollouts:
        ids = [BOS, *rollout.completion_ids]
        total = 0.0
        with torch.no_grad():
            for step, token in enumerate(rollout.completion_ids):
                logits = skewed.module.lm(input_ids=torch.tensor([ids[: step + 1]])).logits[0, -1]
                logits = logits.masked_fill(~valid[step], -math.inf)
                total += float(torch.log_softmax(logits, -1)[token])
        assert exact[rollout.text] == pytest.approx(total, abs=1e-4)


def test_tokenize_rejects_text_and_ids_outside_the_space(skewed):
    with pytest.raises(ValueError, match="not a program"):
        skewed.tokenize_completion("```python\nimport pymc as pm\n```")
    failure = skewed.vocabulary.text_of((*skewed.space.paths()[0], 1))
    assert skewed.tokenize_completion(failure)[-2] == skewed.vocabulary.offsets[-1] + 1
    first = skewed.space.completions[0]
    ids = skewed.tokenize_completion(first)
    wrong_slot = [ids[1], ids[0], *ids[2:]]  # a choice token where another slot is due
    batch = TrainBatch([ENV], [[BOS]], [wrong_slot], torch.zeros(1))
    with pytest.raises(ValueError, match="not a completion"):
        skewed.train_step(batch, build_objective(resolve(["policy=slot"]).objective))


@pytest.mark.parametrize("loss", ["tb", "subtb"])
def test_shared_objective_teaches_the_dugongs_target_and_lowers_failure_mass(loss):
    space = get_space(ENV)
    reference = space_reference_elpd(load_scores(space))
    log_reward = space_log_rewards(space, load_scores(space), reference_elpd=reference)
    backend = make_backend(f"objective={loss}")
    objective = build_objective(resolve([f"objective={loss}"]).objective)
    start = space_metrics(backend, space, reference_elpd=reference)
    for _ in range(200):
        rollouts = backend.sample(ENV, [BOS], [1.0] * 16)
        failed = [r.text not in log_reward for r in rollouts]
        batch = TrainBatch(
            [ENV] * 16,
            [r.prompt_ids for r in rollouts],
            [r.completion_ids for r in rollouts],
            torch.tensor([log_reward.get(r.text, -25.0) for r in rollouts]),
            failed=torch.tensor(failed),
            on_policy=torch.ones(16, dtype=torch.bool),
        )
        metrics = backend.train_step(batch, objective)
    end = space_metrics(backend, space, reference_elpd=reference)
    assert set(metrics) >= {"loss", "log_z", "grad_norm_policy", "grad_norm_log_z"}
    assert start.tv > 0.5 and start.p_valid < 0.3
    assert end.tv < 0.1 and end.logz_error < 0.2 and end.modes_covered == 1.0
    assert end.p_valid > 0.9


def test_save_load_restores_policy_log_z_and_sampling_stream(tmp_path):
    trained = make_backend()
    objective = build_objective(resolve(["policy=slot"]).objective)
    rollouts = trained.sample(ENV, [BOS], [1.0] * 8)
    batch = TrainBatch(
        [ENV] * 8,
        [r.prompt_ids for r in rollouts],
        [r.completion_ids for r in rollouts],
        torch.linspace(-3.0, 0.0, 8),
    )
    trained.train_step(batch, objective)
    trained.save(tmp_path)
    restored = make_backend()
    restored.load(tmp_path)
    assert restored.exact_log_probs() == trained.exact_log_probs()
    assert restored.learned_log_z() == trained.learned_log_z()
    next_texts = [r.text for r in trained.sample(ENV, [BOS], [1.0] * 8)]
    assert [r.text for r in restored.sample(ENV, [BOS], [1.0] * 8)] == next_texts


def test_build_backend_refuses_envs_without_a_space_and_thinking():
    with pytest.raises(ValueError, match="no enumerable program space"):
        build_backend(resolve(["policy=slot", "env=irt"]))
    with pytest.raises(ValueError, match="thinking"):
        build_backend(resolve(["policy=slot", f"env={ENV}", "policy.thinking=latent"]))
    assert make_backend().reference_think_log_prob([[BOS]], [[EOS]]).tolist() == [0.0]
