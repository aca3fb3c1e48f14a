"""Local backend on the mock policy: a real tiny Qwen3 with the real Qwen3 tokenizer, on CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthstats.backends import TrainBatch, build_backend
from synthstats.backends.local import ADAPTER_DIR, LocalBackend
from synthstats.backends.mock_model import mock_model_folder, qwen3_tokenizer_folder
from synthstats.backends.policy_module import pack_trajectories
from synthstats.backends.sampling import sample_completions
from synthstats.config import Config, ConfigError
from synthstats.objectives import build_objective

MESSAGES = [
    {"role": "system", "content": "Write a PyMC model."},
    {"role": "user", "content": "y = [1.2, 0.7]"},
]


def mock_config(**overrides: object) -> Config:
    config = Config()
    config.policy.max_new_tokens = 8
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    return config


def perturb_adapter(backend: LocalBackend, seed: int = 0) -> None:
    """LoRA B starts at zero; give it weights so the adapter changes the policy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in backend.module.lm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def manual_log_pf(
    backend: LocalBackend, prompt: list[int], completion: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """Per-token log-probs from one unpadded forward of the PEFT model's full logits."""
    with torch.no_grad():
        logits = backend.module.lm(input_ids=torch.tensor([prompt + completion])).logits[0]
    start = len(prompt) - 1
    step_logits = logits[start : start + len(completion), : backend.vocab_size] / temperature
    log_probs = step_logits.float().log_softmax(-1)
    return log_probs.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def lora_state(backend: LocalBackend) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().clone()
        for name, param in backend.module.lm.named_parameters()
        if "lora_" in name
    }


def base_state(backend: LocalBackend) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().clone()
        for name, param in backend.module.lm.named_parameters()
        if "lora_" not in name
    }


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    """A shared backend for tests that do not train."""
    shared = build_backend(mock_config())
    perturb_adapter(shared)
    return shared


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_folder(), local_files_only=True)


def test_mock_model_is_loaded_from_a_saved_folder_like_a_hub_model():
    folder = mock_model_folder()
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "qwen3"
    assert model.config.vocab_size == 151669


def test_mock_model_is_written_once_with_the_same_weights_everywhere(tmp_path):
    folder = mock_model_folder(tmp_path)
    assert mock_model_folder(tmp_path) == folder
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left
    fresh = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    cached = AutoModelForCausalLM.from_pretrained(mock_model_folder()).state_dict()
    assert all(torch.equal(value, cached[name]) for name, value in fresh.items())


def test_rendered_prompt_with_thinking_off_matches_the_chat_template(backend, qwen_tokenizer):
    expected = qwen_tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, enable_thinking=False, tokenize=True
    )["input_ids"]
    rendered = backend.render_prompt(MESSAGES)
    assert rendered == list(expected)
    empty_think = qwen_tokenizer.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
    assert rendered[-len(empty_think) :] == empty_think


def test_thinking_latent_leaves_the_think_block_to_the_model(backend, qwen_tokenizer):
    backend.policy.thinking = "latent"
    try:
        rendered = backend.render_prompt(MESSAGES)
    finally:
        backend.policy.thinking = "off"
    assert qwen_tokenizer.decode(rendered).endswith("<|im_start|>assistant\n")
    assert qwen_tokenizer.convert_tokens_to_ids("<think>") not in rendered


def test_sample_returns_the_drawn_ids_at_each_temperature(backend):
    prompt = backend.render_prompt(MESSAGES)
    temperature = 0.7
    state = backend.generator.get_state()
    (rollout,) = backend.sample("dugongs", prompt, [temperature])

    # Replay the draw without a KV cache, from the same generator state.
    replay = torch.Generator().manual_seed(0)
    replay.set_state(state)
    ids = list(prompt)
    with torch.no_grad():
        for _ in rollout.completion_ids:
            logits = backend.module.lm(input_ids=torch.tensor([ids])).logits[0, -1]
            probs = torch.softmax(logits[: backend.vocab_size].float() / temperature, -1)
            ids.append(int(torch.multinomial(probs, 1, generator=replay)))
    assert tuple(ids[len(prompt) :]) == rollout.completion_ids
    assert rollout.prompt_ids == tuple(prompt)
    assert rollout.temperature == temperature
    assert rollout.text == backend.tokenizer.decode(list(rollout.completion_ids))


def test_one_rollout_per_temperature_truncated_at_the_limit(backend):
    prompt = backend.render_prompt(MESSAGES)
    rollouts = backend.sample("dugongs", prompt, [1.0, 1.5, 1.0])
    assert [r.temperature for r in rollouts] == [1.0, 1.5, 1.0]
    for rollout in rollouts:
        # A random policy almost never emits a stop token in 8 draws.
        assert rollout.truncated
        assert len(rollout.completion_ids) == backend.policy.max_new_tokens
        assert rollout.text == backend.tokenizer.decode(list(rollout.completion_ids))
    with pytest.raises(ValueError, match="> 0"):
        backend.sample("dugongs", prompt, [0.0])


class ScriptedLM(nn.Module):
    """A causal-LM stand-in that puts all probability on script[row][step]."""

    def __init__(self, script: list[list[int]], vocab_size: int) -> None:
        super().__init__()
        self.script = script
        self.vocab_size = vocab_size
        self.calls = 0

    def forward(self, input_ids, use_cache, cache=None, logits_to_keep=None):
        step = 0 if cache is None else cache + 1
        self.calls += 1
        logits = torch.full((len(self.script), 1, self.vocab_size), -1e9)
        for row, tokens in enumerate(self.script):
            logits[row, 0, tokens[step]] = 0.0
        return SimpleNamespace(logits=logits, cache=step)


def test_sampling_stops_at_the_first_stop_token_and_keeps_it():
    stop = 9
    lm = ScriptedLM([[1, 2, stop, 3, 4], [5, stop, 6, 7, 8]], vocab_size=10)
    drawn = sample_completions(
        lm,
        [0],
        torch.ones(2),
        max_new_tokens=5,
        stop_ids=[stop],
        vocab_size=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert [d.completion_ids for d in drawn] == [[1, 2, stop], [5, stop]]
    assert [d.truncated for d in drawn] == [False, False]
    assert lm.calls == 3  # stops once every row has finished

    lm = ScriptedLM([[1, 2, 3]], vocab_size=10)
    drawn = sample_completions(
        lm,
        [0],
        torch.ones(1),
        max_new_tokens=3,
        stop_ids=[stop],
        vocab_size=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert drawn[0].completion_ids == [1, 2, 3] and drawn[0].truncated
    assert lm.calls == 3  # no forward pass after the last draw


def test_log_pf_has_gradient_and_equals_temperature_one_log_probs(backend):
    prompts = [backend.render_prompt(MESSAGES), backend.render_prompt(MESSAGES[1:])]
    completions = [[11, 22, 33, 151645], [44, 55]]
    inputs = pack_trajectories(
        ["dugongs", "dugongs"], prompts, completions, pad_id=151643, device=torch.device("cpu")
    )
    backend.module.eval()
    scores = backend.module(inputs)
    assert scores.log_pf.requires_grad
    assert scores.mask.tolist() == [[True] * 4, [True, True, False, False]]
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        expected = manual_log_pf(backend, prompt, completion)
        got = scores.log_pf[row, : len(completion)].detach()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        tempered = manual_log_pf(backend, prompt, completion, temperature=0.7)
        assert not torch.allclose(got, tempered, atol=1e-3)
    assert scores.log_flow.shape == (2, 5)
    assert scores.log_z.shape == (2,)


def test_rescoring_uses_exactly_the_given_ids_not_a_retokenisation(backend):
    """Two tokenisations of one text are two trajectories with different log P_F."""
    prompt = backend.render_prompt(MESSAGES)
    canonical = backend.tokenize_completion("import pymc")
    split = [backend.tokenizer.convert_tokens_to_ids(piece) for piece in ("import", "Ġpy", "mc")]
    split = [*split, backend.tokenizer.eos_token_id]
    assert backend.decode_completion(split) == backend.decode_completion(canonical)
    assert split != canonical
    inputs = pack_trajectories(
        ["dugongs"] * 2, [prompt] * 2, [canonical, split], pad_id=151643, device=backend.device
    )
    backend.module.eval()
    scores = backend.module(inputs)
    assert inputs.completion_ids[1, : len(split)].tolist() == split
    totals = torch.where(scores.mask, scores.log_pf, 0.0).sum(-1).detach()
    torch.testing.assert_close(totals[1], manual_log_pf(backend, prompt, split).sum())
    assert not torch.isclose(totals[0], totals[1])


def test_tokenize_completion_ends_with_the_stop_token_and_decodes_back(backend):
    text = "import pymc as pm\nwith pm.Model() as model:\n    pass"
    ids = backend.tokenize_completion(text)
    assert ids[-1] == backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert backend.decode_completion(ids) == text


def make_batch(backend: LocalBackend) -> TrainBatch:
    prompts = [backend.render_prompt(MESSAGES), backend.render_prompt(MESSAGES[1:])]
    completions = [backend.tokenize_completion("x = 1"), backend.tokenize_completion("y")]
    return TrainBatch(
        prompt_keys=["dugongs", "dugongs"],
        prompt_ids=prompts,
        completion_ids=completions,
        log_reward=torch.tensor([-3.0, -25.0]),
    )


def test_train_step_moves_lora_log_z_and_flow_but_not_the_base():
    config = mock_config()
    backend = build_backend(config)
    objective = build_objective(config.objective)
    lora_before, base_before = lora_state(backend), base_state(backend)
    flow_before = [p.detach().clone() for p in backend.module.flow.parameters()]
    log_z_before = backend.module.log_z.values.detach().clone()

    metrics = backend.train_step(make_batch(backend), objective)

    assert {"loss", "log_z", "log_pf_mean", "tokens", "grad_norm_lora"} <= set(metrics)
    assert all(isinstance(value, float) for value in metrics.values())
    lora_after = lora_state(backend)
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before)
    assert all(p.dtype == torch.float32 for p in lora_after.values())
    for name, value in base_state(backend).items():
        assert torch.equal(value, base_before[name]), name
    assert not any(
        p.requires_grad for n, p in backend.module.lm.named_parameters() if "lora_" not in n
    )
    assert not torch.equal(backend.module.log_z.values, log_z_before)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(flow_before, backend.module.flow.parameters(), strict=True)
    )
    groups = {g["name"]: g for g in backend.optimizer.param_groups}
    assert groups["lora"]["lr"] == config.runner.train.learning_rate
    assert groups["log_z"]["lr"] == config.objective.log_z_lr
    assert groups["flow"]["lr"] == config.runner.train.flow_learning_rate
    assert all(g["params"] for g in backend.optimizer.param_groups)


def test_tb_has_no_flow_group_and_vargrad_no_log_z_group():
    config = mock_config(objective__loss="tb", objective__log_z="vargrad")
    backend = build_backend(config)
    assert backend.module.flow is None and backend.module.log_z is None
    assert [g["name"] for g in backend.optimizer.param_groups] == ["lora"]
    metrics = backend.train_step(make_batch(backend), build_objective(config.objective))
    assert metrics["loss"] > 0
    with pytest.raises(ValueError, match="flow estimator"):
        backend.train_step(make_batch(backend), build_objective(mock_config().objective))


def test_seeded_builds_match_and_checkpointing_gives_the_same_step():
    """Identical initial weights from one seed (ranks, resume); checkpointing changes no math."""
    results, initial = [], []
    for checkpointing in (False, True):
        config = mock_config(
            objective__flow_estimator="hidden_head", policy__gradient_checkpointing=checkpointing
        )
        backend = build_backend(config)
        assert backend.module.lm.get_base_model().is_activation_checkpointing == checkpointing
        initial.append((lora_state(backend), backend.module.flow.state_dict()))
        perturb_adapter(backend)
        results.append(backend.train_step(make_batch(backend), build_objective(config.objective)))
    for first, second in zip(*initial, strict=True):
        for name, value in first.items():
            assert torch.equal(value, second[name]), name
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
    assert results[0]["grad_norm_flow"] == pytest.approx(results[1]["grad_norm_flow"], rel=1e-4)
    assert results[0]["grad_norm_flow"] > 0


def test_save_load_round_trip_restores_everything(tmp_path):
    config = mock_config()
    objective = build_objective(config.objective)
    trained = build_backend(config)
    batch = make_batch(trained)
    for _ in range(2):
        trained.train_step(batch, objective)
    trained.save(tmp_path)
    saved_lora = lora_state(trained)

    restored = build_backend(mock_config())
    restored.load(tmp_path)
    restored_lora = lora_state(restored)
    assert saved_lora.keys() == restored_lora.keys()
    for name, value in saved_lora.items():
        assert torch.equal(restored_lora[name], value), name
    assert torch.equal(restored.module.log_z.values, trained.module.log_z.values)
    trained_flow = trained.module.flow.state_dict()
    for name, value in restored.module.flow.state_dict().items():
        assert torch.equal(value, trained_flow[name]), name
    saved_state = trained.optimizer.state_dict()
    loaded_state = restored.optimizer.state_dict()
    assert saved_state["param_groups"] == loaded_state["param_groups"]
    assert saved_state["state"].keys() == loaded_state["state"].keys()
    for index, slots in saved_state["state"].items():
        for key, value in slots.items():
            assert torch.equal(loaded_state["state"][index][key], value)

    # Identical continuation: the same next sample and the same next update.
    prompt = trained.render_prompt(MESSAGES)
    assert trained.sample("dugongs", prompt, [1.0]) == restored.sample("dugongs", prompt, [1.0])
    assert trained.train_step(batch, objective) == restored.train_step(batch, objective)
    for name, value in lora_state(trained).items():
        assert torch.equal(lora_state(restored)[name], value), name

    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(mock_model_folder()), tmp_path / ADAPTER_DIR
    )
    reloaded_lora = {n: p for n, p in reloaded.named_parameters() if "lora_" in n}
    assert reloaded_lora.keys() == saved_lora.keys()
    for name, param in reloaded_lora.items():
        assert torch.equal(param, saved_lora[name]), name


def test_reference_think_log_prob_scores_the_think_span_with_the_adapter_off(backend):
    prompt = backend.render_prompt(MESSAGES)
    completion = backend.tokenize_completion("<think>\nmaybe\n</think>\n\nx = 1")
    think_end = completion.index(backend.tokenizer.convert_tokens_to_ids("</think>"))
    with backend.module.lm.disable_adapter():
        base_log_pf = manual_log_pf(backend, prompt, completion)
    adapter_log_pf = manual_log_pf(backend, prompt, completion)

    (value,) = backend.reference_think_log_prob([prompt], [completion]).tolist()
    assert value == pytest.approx(float(base_log_pf[: think_end + 1].sum()), rel=1e-5)
    assert value != pytest.approx(float(adapter_log_pf[: think_end + 1].sum()), rel=1e-3)
    assert value != pytest.approx(float(base_log_pf.sum()), rel=1e-3)


def test_build_backend_refuses_what_it_cannot_build():
    with pytest.raises(ConfigError, match="go together"):
        build_backend(mock_config(policy__kind="tinker"))
    with pytest.raises(ValueError, match="model_name"):
        build_backend(mock_config(policy__kind="hf", policy__model_name=""))


def test_the_loss_reads_the_samplers_log_pf_even_with_dropout_modules_in_the_model():
    """The train-mode log P_F the loss uses equals, token for token, the log-probability the
    sampler drew each id with, even in a model with dropout modules (here LoRA's at 0.05,
    which the config now refuses as having no effect; Config() skips that validation)."""
    config = Config()
    config.policy.max_new_tokens = 6
    config.policy.lora_dropout = 0.05
    local = build_backend(config)
    perturb_adapter(local)
    prompt = local.render_prompt(MESSAGES)
    local.module.eval()
    drawn = sample_completions(
        local.module.lm,
        prompt,
        torch.ones(3),
        max_new_tokens=6,
        stop_ids=local.stop_ids,
        vocab_size=local.vocab_size,
        generator=torch.Generator().manual_seed(3),
    )
    completions = [row.completion_ids for row in drawn]
    scores = local.loss_scores(["dugongs"] * 3, [prompt] * 3, completions)
    assert scores.log_pf.requires_grad and local.module.training
    for row, sampled in enumerate(drawn):
        torch.testing.assert_close(
            scores.log_pf[row, : len(sampled.log_probs)],
            torch.tensor(sampled.log_probs),
            atol=1e-4,
            rtol=0,
        )
    # The check can fail: with dropout on (plain train mode) the same ids score otherwise.
    local.wrapped.train()
    inputs = pack_trajectories(
        ["dugongs"] * 3,
        [prompt] * 3,
        completions,
        pad_id=local.tokenizer.pad_token_id,
        device=local.device,
    )
    with_dropout = local.wrapped(inputs).log_pf
    assert not torch.allclose(with_dropout[scores.mask], scores.log_pf[scores.mask], atol=1e-3)
