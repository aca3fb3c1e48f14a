"""Tinker backend against a fake service (tests/fake_tinker.py); no test reaches a network
except the opt-in live smoke test at the end (skipped unless TINKER_API_KEY is set)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tinker
import torch
from fake_tinker import (
    HANG,
    LOST,
    POISONED,
    STALL,
    FakeServer,
    Queued,
    Returns,
    cut_at_stop_text,
    promise_expired,
    rate_limit_error,
    request_failed,
    service_model_folder,
    status_error,
)
from tinker import types
from tinker.lib.api_future_impl import QueueState
from tinker.lib.queue_state_logger import QueueStateLogger
from tinker.types import RequestErrorCategory

from synthstats.backends import TrainBatch, build_backend, tinker_queue
from synthstats.backends.local import LocalBackend
from synthstats.backends.mock_model import qwen3_tokenizer_folder
from synthstats.backends.sampling import SampledIds
from synthstats.backends.tinker import CHECKPOINT_FILE, STATE_FILE, TinkerBackend, lora_blocks
from synthstats.backends.tinker_chat import QWEN3_HEAD
from synthstats.backends.tinker_connection import TinkerSetupError
from synthstats.backends.tinker_datums import completion_log_probs, trajectory_datum
from synthstats.backends.tinker_queue import SDK_SURFACE, sdk_surface_problems, watch_queue
from synthstats.backends.tinker_retry import (
    TinkerBackendError,
    TinkerFatalError,
    TinkerStepError,
    TinkerTimeoutError,
)
from synthstats.config import Config, ConfigError
from synthstats.errors import PolicyStepError
from synthstats.judge.score import Score
from synthstats.objectives import build_objective

MESSAGES = [
    {"role": "system", "content": "Write a PyMC model."},
    {"role": "user", "content": "y = [1.2, 0.7]"},
]
FAKE_KEY = "tml-fake-key-for-tests-only"


def config_for(runner: str, **overrides: object) -> Config:
    """A tiny run config; runner=tinker uses the hosted-policy fields, local the mock model."""
    config = Config()
    config.policy.max_new_tokens = 8
    config.policy.retry_backoff_s = 0.001
    config.runner.name = runner
    if runner == "tinker":
        config.policy.kind = "tinker"
        config.policy.model_name = "Qwen/Qwen3-8B"
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section) if section != "train" else config.runner.train, key, value)
    return config


def perturbed_local(config: Config) -> LocalBackend:
    """The mock policy with LoRA B moved off zero, so the adapter changes the policy."""
    local = build_backend(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in local.module.lm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return local


@pytest.fixture(scope="module")
def base_lm():
    """The fake server's model: a tiny Qwen3 with the service's full head (151,936 outputs,
    the tokenizer names 151,669), as a PEFT model with a non-zero adapter."""
    folder = str(service_model_folder())
    return perturbed_local(
        config_for("local", policy__kind="hf", policy__model_name=folder)
    ).module.lm


@pytest.fixture
def server(base_lm) -> FakeServer:
    return FakeServer(base_lm, models=["Qwen/Qwen3-8B", "Qwen/Qwen3.5-4B"])


@pytest.fixture
def make_backend(server, monkeypatch):
    """TinkerBackend on the fake service, with a dummy key in the environment."""
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)

    def make(config: Config | None = None, fake: FakeServer = server) -> TinkerBackend:
        config = config or config_for("tinker")
        return TinkerBackend(
            policy=config.policy,
            train=config.runner.train,
            objective=config.objective,
            prompt_keys=[config.env.name],
            seed=config.seed,
            connection=fake.connection(),
        )

    return make


def two_trajectories(backend) -> TrainBatch:
    prompt = backend.render_prompt(MESSAGES)
    short_prompt = backend.render_prompt(MESSAGES[1:])
    return TrainBatch(
        prompt_keys=["dugongs", "dugongs"],
        prompt_ids=[prompt, short_prompt],
        completion_ids=[
            backend.tokenize_completion("import pymc as pm"),
            backend.tokenize_completion("<think>\nnormal\n</think>\n\nx = 1"),
        ],
        log_reward=torch.tensor([-2.0, 1.5]),
    )


# ---- datums ------------------------------------------------------------------------------


def test_datum_shifts_the_sequence_and_weights_only_the_completion():
    datum = trajectory_datum([1, 2, 3], [4, 5])
    assert datum.model_input.to_ints() == [1, 2, 3, 4]
    assert datum.loss_fn_inputs["target_tokens"].tolist() == [2, 3, 4, 5]
    assert datum.loss_fn_inputs["weights"].tolist() == [0.0, 0.0, 1.0, 1.0]

    logprobs = [torch.tensor([-9.0, -9.0, -0.5, -0.25]), torch.tensor([-9.0, -1.0])]
    log_pf, mask = completion_log_probs(logprobs, [3, 2], [2, 1])
    assert log_pf.tolist() == [[-0.5, -0.25], [-1.0, 0.0]]
    assert mask.tolist() == [[True, True], [True, False]]


# ---- learning: parity with the local backend ---------------------------------------------


def assert_same_gradient(tinker_grad: torch.Tensor, local_grad: torch.Tensor, name: str) -> None:
    """Equal within 1e-5 of the gradient's scale (absolute when it is at most 1).

    Both sides are float32; a padded batch and per-row forwards sum in different orders,
    which at this batch's residual (~100 nats) moves gradients of ~100 by ~4e-5.
    """
    scale = max(1.0, float(local_grad.abs().max()))
    assert float(local_grad.abs().max()) > 1e-3, f"{name}: no gradient to compare"
    difference = float((tinker_grad - local_grad).abs().max())
    assert difference <= 1e-5 * scale, f"{name}: differs by {difference:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("second_row_failed", [False, True], ids=["all valid", "one failed"])
def test_gradients_and_loss_match_the_local_backend(make_backend, second_row_failed):
    """Same weights, same batch: the LoRA gradient the service applies, the log Z and flow
    gradients and the loss equal the local backend's (learning rates 0, clipping off). With
    a failed on-policy row, both leave it out of the balance and add the failure term."""
    frozen = {
        "train__learning_rate": 0.0,
        "train__flow_learning_rate": 0.0,
        "objective__log_z_lr": 0.0,
        "train__max_grad_norm": 1e9,
    }
    local = perturbed_local(config_for("local", **frozen))
    server = FakeServer(copy.deepcopy(local.module.lm))
    # The mock model's head is its tokenizer (151,669 ids), so both normalise alike.
    head = {"policy__head_size": local.module.lm.config.vocab_size}
    hosted = make_backend(config_for("tinker", **frozen, **head), fake=server)
    with torch.no_grad():
        local.module.log_z.values.fill_(3.0)
    hosted.log_z.load_state_dict(local.module.log_z.state_dict())
    hosted.flow.load_state_dict(local.module.flow.state_dict())
    batch = two_trajectories(local)
    if second_row_failed:
        batch = dataclasses.replace(
            batch, failed=torch.tensor([False, True]), on_policy=torch.tensor([True, True])
        )
    assert hosted.render_prompt(MESSAGES) == local.render_prompt(MESSAGES)
    objective = build_objective(config_for("local").objective)

    local_metrics = local.train_step(batch, objective)
    hosted_metrics = hosted.train_step(batch, objective)

    (applied,) = server.applied_grads
    local_lora = {
        name: param.grad for name, param in local.module.lm.named_parameters() if "lora_" in name
    }
    assert set(applied) == set(local_lora)
    for name, grad in applied.items():
        assert_same_gradient(grad, local_lora[name], name)
    assert_same_gradient(hosted.log_z.values.grad, local.module.log_z.values.grad, "log Z")
    for (name, param), local_param in zip(
        hosted.flow.named_parameters(), local.module.flow.parameters(), strict=True
    ):
        assert_same_gradient(param.grad, local_param.grad, name)
    for key in ("loss", "log_z", "log_pf_mean", "tokens", "grad_norm_log_z", "grad_norm_flow"):
        assert hosted_metrics[key] == pytest.approx(local_metrics[key], rel=1e-5), key


def test_sequence_log_probs_match_the_local_backend(make_backend):
    """Same weights, same trajectories: the summed completion log-probs eval reads from the
    Tinker sampler (compute_logprobs) equal the local backend's, at temperature 1."""
    local = perturbed_local(config_for("local"))
    head = local.module.lm.config.vocab_size
    hosted = make_backend(
        config_for("tinker", policy__head_size=head),
        fake=FakeServer(copy.deepcopy(local.module.lm)),
    )
    batch = two_trajectories(local)

    expected = local.sequence_log_probs(batch.prompt_ids, batch.completion_ids)
    scored = hosted.sequence_log_probs(batch.prompt_ids, batch.completion_ids)

    assert scored.shape == (2,) and bool((expected < -1.0).all())
    torch.testing.assert_close(scored, expected, rtol=1e-6, atol=1e-4)


def test_step_submits_the_optimizer_step_before_waiting_and_the_next_sample_sees_it(
    make_backend, server
):
    backend = make_backend(config_for("tinker", train__learning_rate=1e-2))
    prompt = backend.render_prompt(MESSAGES)
    backend.sample("dugongs", prompt, [1.0])
    before = len(server.events)

    backend.train_step(two_trajectories(backend), build_objective(Config().objective))
    step_events = server.events[before:]
    assert step_events.index("submit optim_step") < step_events.index(
        "wait forward_backward_custom"
    )
    assert step_events[-1] == "wait optim_step"
    backend.sample("dugongs", prompt, [1.0])
    assert server.events[before + len(step_events) :][:2] == [
        "submit save_weights_and_get_sampling_client",
        "wait save_weights_and_get_sampling_client",
    ]
    assert server.sample_versions == [0, 1]  # the second draw sees the trained weights


def test_sample_returns_one_rollout_per_temperature_in_order(make_backend, server):
    backend = make_backend()
    prompt = backend.render_prompt(MESSAGES)
    rollouts = backend.sample("dugongs", prompt, [1.0, 1.5, 1.0])

    assert [r.temperature for r in rollouts] == [1.0, 1.5, 1.0]
    # One request per sample, each with its own seed.
    assert [n for n, _ in server.sample_requests] == [1, 1, 1]
    assert len({seed for _, seed in server.sample_requests}) == 3
    for rollout in rollouts:
        assert rollout.prompt_ids == tuple(prompt)
        assert 1 <= len(rollout.completion_ids) <= 8
        stopped = rollout.completion_ids[-1] in backend.chat.stop_ids
        assert rollout.truncated == (not stopped)
        assert rollout.text == backend.decode_completion(rollout.completion_ids)


# ---- faults ------------------------------------------------------------------------------


def test_rate_limits_are_retried_with_logging_and_the_batch_applied_once(
    make_backend, server, caplog
):
    backend = make_backend()
    prompt = backend.render_prompt(MESSAGES)
    server.failures["sample"] = [rate_limit_error(), rate_limit_error()]
    server.failures["optim_step"] = [rate_limit_error()]

    with caplog.at_level(logging.WARNING, logger="synthstats.backends.tinker_retry"):
        (rollout,) = backend.sample("dugongs", prompt, [1.0])
        backend.train_step(two_trajectories(backend), build_objective(Config().objective))

    assert rollout.completion_ids
    retries = [r.getMessage() for r in caplog.records]
    assert sum("sampling failed (RateLimitError" in m for m in retries) == 2
    assert sum("optimizer step failed (RateLimitError" in m for m in retries) == 1
    assert len(server.applied_grads) == 1
    assert FAKE_KEY not in caplog.text


def test_a_bad_request_is_not_retried(make_backend, server):
    backend = make_backend()
    request = httpx.Request("POST", "https://tinker.invalid/api/v1/sample")
    bad = tinker.BadRequestError(
        "prompt too long", response=httpx.Response(400, request=request), body=None
    )
    server.failures["sample"] = [bad]
    with pytest.raises(TinkerFatalError, match=r"refused sampling \(400\)") as raised:
        backend.sample("dugongs", backend.render_prompt(MESSAGES), [1.0])
    assert raised.value.__cause__ is bad
    assert server.events.count("submit sample") == 1


def test_retries_are_bounded(make_backend, server):
    config = config_for("tinker")
    config.policy.max_retries = 1
    backend = make_backend(config)
    server.failures["sample"] = [rate_limit_error(), rate_limit_error()]
    with pytest.raises(TinkerBackendError, match="after 2 attempts"):
        backend.sample("dugongs", backend.render_prompt(MESSAGES), [1.0])


def test_a_request_without_answer_is_a_clear_timeout(make_backend, server):
    backend = make_backend()
    prompt = backend.render_prompt(MESSAGES)
    backend.sample("dugongs", prompt, [1.0])  # the sampler exists
    backend.retry = dataclasses.replace(backend.retry, timeout_s=0.05)
    server.failures["sample"] = [HANG]
    with pytest.raises(TinkerTimeoutError, match=r"sampling got no answer.*request_timeout_s"):
        backend.sample("dugongs", prompt, [1.0])


def test_a_failed_forward_backward_stops_without_applying_the_batch(make_backend, server):
    backend = make_backend()
    batch = two_trajectories(backend)
    server.failures["forward_backward_custom"] = [rate_limit_error()]
    log_z_before = backend.log_z.values.detach().clone()

    with pytest.raises(TinkerStepError, match="reload the last checkpoint"):
        backend.train_step(batch, build_objective(Config().objective))
    assert server.applied_grads == []
    assert torch.equal(backend.log_z.values.detach(), log_z_before)
    with pytest.raises(TinkerBackendError, match="last checkpoint"):
        backend.train_step(batch, build_objective(Config().objective))


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (status_error(tinker.AuthenticationError, 401), "rejected the API key.*TINKER_API_KEY"),
        (status_error(tinker.BillingError, 402), "billing problem.*Tinker console"),
        (ValueError("Error retrieving result: 404"), "SDK does not retry it.*tinker 0.38"),
        (request_failed(RequestErrorCategory.User, "bad input"), "request error \\(user\\)"),
    ],
)
def test_fatal_sdk_errors_stop_at_once_with_what_to_do(make_backend, server, error, message):
    backend = make_backend()
    server.failures["sample"] = [error]
    with pytest.raises(TinkerFatalError, match=message) as raised:
        backend.sample("dugongs", backend.render_prompt(MESSAGES), [1.0])
    assert raised.value.__cause__ is error
    assert server.events.count("submit sample") == 1  # never retried


def test_a_410_on_the_sampler_refresh_and_a_server_failure_are_retried(make_backend, server):
    backend = make_backend()
    server.failures["save_weights_and_get_sampling_client"] = [promise_expired()]
    server.failures["sample"] = [request_failed(RequestErrorCategory.Server, "overloaded")]
    (rollout,) = backend.sample("dugongs", backend.render_prompt(MESSAGES), [1.0])
    assert rollout.completion_ids
    assert server.events.count("submit save_weights_and_get_sampling_client") == 2
    assert server.events.count("submit sample") == 2


def test_a_queue_wait_longer_than_the_timeout_is_waited_for(make_backend, server):
    """The service reports the request as queued: no timeout, however long the queue, up to
    policy.queue_timeout_s; the SDK's own observers still get every report."""
    backend = make_backend()
    prompt = backend.render_prompt(MESSAGES)
    backend.sample("dugongs", prompt, [1.0])  # the clients exist
    backend.retry = dataclasses.replace(backend.retry, timeout_s=0.5)
    server.failures["sample"] = [Queued(1.5)]
    (rollout,) = backend.sample("dugongs", prompt, [1.0])
    assert rollout.completion_ids
    assert len(backend._sampler.queue_reports) >= 10  # passed on to the client's own observer

    server.failures["forward_backward_custom"] = [Queued(1.5)]
    backend.train_step(two_trajectories(backend), build_objective(Config().objective))
    assert len(server.applied_grads) == 1

    backend.retry = dataclasses.replace(backend.retry, queue_timeout_s=0.3)
    server.failures["sample"] = [Queued(2.0)]
    with pytest.raises(TinkerTimeoutError, match="in the service's queue.*queue_timeout_s"):
        backend.sample("dugongs", prompt, [1.0])


def test_the_sdk_still_reports_queue_state_where_the_watch_listens():
    """SDK 0.38 has no public way to observe queues; tinker_queue.py hooks the observers its
    clients already pass. This fails, naming the part, when an SDK update moves one."""
    problems = sdk_surface_problems()
    assert problems == [], (
        f"tinker {tinker.__version__} changed what synthstats/backends/tinker_queue.py hooks "
        f"into ({'; '.join(problems)}); it relies on: {'; '.join(SDK_SURFACE)}. Update "
        "watch_queue and the fake (tests/fake_tinker.py) to the SDK's new way, or pin tinker 0.38"
    )


class MovedObserverTrainingClient(tinker.TrainingClient):
    """An SDK update that hands its futures another observer than _queue_state_logger."""

    def __init__(self) -> None:
        self._queue_state_logger = QueueStateLogger("model", "Training")

    def submit(self, future_class: Any) -> Any:
        return future_class(queue_state_observer=self._telemetry_observer)


def test_a_moved_sdk_observer_is_named_and_the_watch_stands_down(monkeypatch, caplog):
    monkeypatch.setattr(tinker, "TrainingClient", MovedObserverTrainingClient)
    problems = sdk_surface_problems()
    assert len(problems) == 1 and "self._telemetry_observer" in problems[0]
    tinker_queue._surface_changed.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, "synthstats.backends.tinker_queue"):
            assert watch_queue(MovedObserverTrainingClient()) is None
        assert "queue reports cannot be heard" in caplog.text
    finally:
        tinker_queue._surface_changed.cache_clear()


def test_queue_watch_hooks_into_the_real_sdk_clients_own_observers():
    """Real SDK client classes, built without a session: the watch takes the observer's place
    and passes every report on, so the SDK's own pause logging still runs."""
    training = tinker.TrainingClient.__new__(tinker.TrainingClient)
    logger = training._queue_state_logger = QueueStateLogger("model", "Training")
    watch = watch_queue(training)
    training._queue_state_logger.on_queue_state_change(QueueState.PAUSED_RATE_LIMIT, None)
    assert watch.state == QueueState.PAUSED_RATE_LIMIT and watch.last_report is not None
    assert logger._last_state == QueueState.PAUSED_RATE_LIMIT  # passed on to the SDK's logger

    sampler = tinker.SamplingClient.__new__(tinker.SamplingClient)  # no session needed
    sampler._last_queue_state_logged = 0.0
    sampler._sampling_session_id = "fake-session"
    watch = watch_queue(sampler)
    sampler.on_queue_state_change(QueueState.PAUSED_CAPACITY, "busy")  # as the SDK calls it
    assert (watch.state, watch.reason) == (QueueState.PAUSED_CAPACITY, "busy")
    assert sampler._last_queue_state_logged > 0  # the SDK's own logging still ran
    assert watch_queue(object()) is None


def test_the_lazy_first_submission_is_bounded(make_backend, server):
    """ServiceClient/RestClient open their session inside the first submission."""
    server.failures["get_server_capabilities"] = [STALL]
    try:
        with pytest.raises(TinkerTimeoutError, match="could not be submitted.*session"):
            make_backend(config_for("tinker", policy__request_timeout_s=0.1))
    finally:
        server.unstall.set()


def test_a_loss_function_that_raises_surfaces_at_result_and_poisons_the_client(
    make_backend, server, monkeypatch
):
    backend = make_backend()
    batch = two_trajectories(backend)
    caller = threading.get_ident()
    seen: dict[str, object] = {}

    def broken_loss(*args: object, **kwargs: object) -> None:
        seen["thread"] = threading.get_ident()
        seen["submitted"] = list(server.events)
        raise ArithmeticError("boom")

    monkeypatch.setattr("synthstats.backends.tinker.objective_loss", broken_loss)
    with pytest.raises(TinkerFatalError, match="custom loss function raised ArithmeticError"):
        backend.train_step(batch, build_objective(Config().objective))
    assert seen["thread"] != caller  # the SDK's loss thread, after submission returned
    assert "submit forward_backward_custom" in seen["submitted"]
    assert server.applied_grads == []
    # The optimizer step queued behind it got the SDK's poisoned-client RuntimeError.
    training = backend._training
    with pytest.raises(RuntimeError, match=POISONED):
        training.optim_step(backend.adam).result(timeout=5)
    with pytest.raises(TinkerBackendError, match="cannot go on"):
        backend.train_step(batch, build_objective(Config().objective))


def test_a_poisoned_client_is_a_step_error_the_loop_can_reload_from(make_backend, server):
    backend = make_backend()
    server.failures["optim_step"] = [RuntimeError(f"{POISONED} (fake)")]
    with pytest.raises(TinkerStepError, match="reload the last checkpoint") as raised:
        backend.train_step(two_trajectories(backend), build_objective(Config().objective))
    assert isinstance(raised.value, PolicyStepError)


def test_a_resume_then_two_steps_and_one_sampler_save_per_checkpoint(
    make_backend, server, tmp_path
):
    config = config_for("tinker", train__learning_rate=1e-2)
    objective = build_objective(config.objective)
    first = make_backend(config)
    batch = two_trajectories(first)
    first.train_step(batch, objective)
    before = len(server.events)
    first.save(tmp_path)
    first.sample("dugongs", first.render_prompt(MESSAGES), [1.0])
    since = server.events[before:]
    # The checkpoint's sampler weights serve the next sample: saved once, not twice.
    assert since.count("submit save_weights_for_sampler") == 1
    assert "submit save_weights_and_get_sampling_client" not in since
    assert "submit create_sampling_client" in since

    second = make_backend(config)
    second.load(tmp_path)
    metrics = [second.train_step(batch, objective) for _ in range(2)]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert len(server.applied_grads) == 3 and second.steps == 3
    second.sample("dugongs", second.render_prompt(MESSAGES), [1.0])
    assert server.sample_versions[-1] == 3  # the restored client's weights, two steps on


def test_a_retried_save_takes_a_fresh_name(make_backend, server, tmp_path):
    """The first attempt was saved, its answer lost (410): the service refuses a name twice."""
    backend = make_backend()
    backend.train_step(two_trajectories(backend), build_objective(Config().objective))
    server.failures["save_state"] = [LOST]
    server.failures["save_weights_for_sampler"] = [LOST]
    backend.save(tmp_path)
    saved = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    assert saved["state_path"].endswith("/weights/step-000001-retry1")
    assert saved["sampler_path"].endswith("/sampler_weights/step-000001-retry1")
    training = backend._training
    with pytest.raises(tinker.RequestFailedError, match="already exists"):
        training.save_weights_for_sampler("step-000001").result(timeout=5)


def test_sampled_ids_past_the_tokenizer_fit_the_head_and_ids_past_the_head_are_refused(
    make_backend, server
):
    backend = make_backend()
    assert backend.flow.token_embedding.num_embeddings == QWEN3_HEAD
    assert len(backend.chat.tokenizer) < QWEN3_HEAD
    stop = backend.chat.stop_ids[0]
    prompt = backend.render_prompt(MESSAGES)

    def answer(*tokens: int) -> Returns:
        sequence = types.SampledSequence(
            stop_reason="stop", sequence_id="planted", tokens_np=np.asarray(tokens, np.int32)
        )
        return Returns(types.SampleResponse(sequences=[sequence]))

    server.failures["sample"] = [answer(151_900, stop)]
    (rollout,) = backend.sample("dugongs", prompt, [1.0])
    batch = TrainBatch(["dugongs"], [prompt], [list(rollout.completion_ids)], torch.tensor([0.0]))
    assert math.isfinite(backend.train_step(batch, build_objective(Config().objective))["loss"])

    server.failures["sample"] = [answer(QWEN3_HEAD, stop)]
    with pytest.raises(TinkerBackendError, match="outside Qwen/Qwen3-8B's LM head.*head_size"):
        backend.sample("dugongs", prompt, [1.0])
    bad = TrainBatch(["dugongs"], [prompt], [[QWEN3_HEAD, stop]], torch.tensor([0.0]))
    submitted = server.events.count("submit forward_backward_custom")
    with pytest.raises(TinkerBackendError, match="outside"):
        backend.train_step(bad, build_objective(Config().objective))
    assert server.events.count("submit forward_backward_custom") == submitted


def test_the_service_normalises_log_pf_over_the_whole_head(make_backend, server, base_lm):
    """README: the local backend cuts logits at len(tokenizer); Tinker does not."""
    backend = make_backend()
    batch = two_trajectories(backend)
    scored = backend.sequence_log_probs(batch.prompt_ids[:1], batch.completion_ids[:1])
    prompt, completion = batch.prompt_ids[0], batch.completion_ids[0]
    with torch.no_grad():
        logits = base_lm(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    steps = logits[len(prompt) - 1 : -1]
    target = torch.tensor(completion)[:, None]
    full = steps.log_softmax(-1).gather(-1, target).sum()
    cut = steps[:, : len(backend.chat.tokenizer)].log_softmax(-1).gather(-1, target).sum()
    assert float(scored[0]) == pytest.approx(float(full), abs=1e-4)
    assert float(full) < float(cut) - 1e-4


def test_a_groups_samples_differ(make_backend, server):
    """One seed for a whole request may give n equal samples (the fake does so on purpose);
    each sample gets its own request and seed, so a group's samples differ."""
    backend = make_backend(config_for("tinker", policy__max_new_tokens=6))
    prompt = backend.render_prompt(MESSAGES)
    rollouts = backend.sample("dugongs", prompt, [1.0] * 4)
    assert len({r.completion_ids for r in rollouts}) > 1
    shared = backend._sampler.sample(
        types.ModelInput.from_ints(prompt), 4, backend._sampling_params(1.0)
    ).result(timeout=60)
    assert len({tuple(s.tokens) for s in shared.sequences}) == 1


def test_adam_settings_are_one_set_for_both_backends(make_backend):
    overrides = {"policy__adam_beta2": 0.98, "policy__adam_eps": 1e-10}
    hosted = make_backend(config_for("tinker", **overrides))
    local = build_backend(config_for("local", **overrides))
    assert (hosted.adam.beta1, hosted.adam.beta2, hosted.adam.eps) == (0.9, 0.98, 1e-10)
    for optimizer in (hosted.optimizer, local.optimizer):
        for group in optimizer.param_groups:
            assert (group["betas"], group["eps"]) == ((0.9, 0.98), 1e-10)


# ---- start-up checks ---------------------------------------------------------------------


def test_a_missing_key_is_named_before_any_work(server, monkeypatch, tmp_path):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no stored `tinker auth login` key
    config = config_for("tinker")
    with pytest.raises(TinkerSetupError, match="TINKER_API_KEY"):
        TinkerBackend(
            policy=config.policy,
            train=config.runner.train,
            objective=config.objective,
            prompt_keys=["dugongs"],
            connection=server.connection(),
        )
    assert server.events == []


def test_preflight_refuses_no_key_and_an_unknown_model_before_the_run_folder(monkeypatch, tmp_path):
    """synthstats-train checks both without a request, before output_dir exists."""
    from click.testing import CliRunner

    from synthstats.cli import train

    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no stored `tinker auth login` key
    run_dir = tmp_path / "run"
    base = ["runner=tinker", "policy=tinker", "env=dugongs", f"output_dir={run_dir}"]
    unknown = "policy.model_name=Qwen/Qwen3.5-4B"

    no_key = CliRunner().invoke(train, base)
    assert no_key.exit_code == 2, no_key.output
    assert "needs an API key: set TINKER_API_KEY" in no_key.output
    # Settings wrong on any machine come first, alone; then what this machine lacks.
    family = CliRunner().invoke(train, [*base, unknown])
    assert family.exit_code == 2, family.output
    assert "'Qwen/Qwen3.5-4B' is not in the Tinker backend's family table" in family.output
    spelled_out = [
        unknown,
        f"policy.tokenizer={qwen3_tokenizer_folder()}",
        "policy.chat_format=qwen3_instruct",
        "policy.head_size=151700",
    ]
    only_key = CliRunner().invoke(train, [*base, *spelled_out])
    assert only_key.exit_code == 2 and "family table" not in only_key.output
    assert "TINKER_API_KEY" in only_key.output

    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    # The family is wrong on any machine: --dry-run refuses it too; the key is this machine's.
    dry = CliRunner().invoke(train, [*base, unknown, "--dry-run"])
    assert dry.exit_code == 2 and "family table" in dry.output
    assert not run_dir.exists() and not (tmp_path / "home").exists()


def test_an_unsupported_model_lists_the_supported_ones(make_backend):
    config = config_for("tinker")
    config.policy.model_name = "Qwen/Qwen3-4B-Instruct-2507"
    with pytest.raises(TinkerSetupError, match=r"supported: Qwen/Qwen3-8B, Qwen/Qwen3.5-4B"):
        make_backend(config)


def test_a_model_outside_the_family_table_needs_tokenizer_format_and_head(make_backend):
    config = config_for("tinker")
    for name in ("Qwen/Qwen3.5-4B", "Qwen/Qwen3-VL-8B-Instruct"):
        config.policy.model_name = name
        with pytest.raises(ConfigError, match="policy.tokenizer.*chat_format.*head_size"):
            make_backend(config)


@pytest.mark.parametrize(
    ("model_name", "chat_format"),
    [
        ("Qwen/Qwen3-8B", "qwen3_hybrid"),
        ("Qwen/Qwen3-30B-A3B", "qwen3_hybrid"),
        ("Qwen/Qwen3-4B-Instruct-2507", "qwen3_instruct"),
        ("Qwen/Qwen3-30B-A3B-Instruct-2507", "qwen3_instruct"),
        ("Qwen/Qwen3-8B-Base", "role_plain"),
    ],
)
def test_each_family_renders_its_own_prompt_token_for_token(make_backend, model_name, chat_format):
    """Against the bundled Qwen3 template: hybrid with thinking off ends in an empty think
    block; Instruct-2507 has no think tags (for system and user turns its template renders
    what the hybrid one does with thinking on); Base gets tinker-cookbook's role_colon lines."""
    server = FakeServer(None, models=[model_name])
    backend = make_backend(config_for("tinker", policy__model_name=model_name), fake=server)
    assert backend.chat.chat_format == chat_format and backend.head_size == QWEN3_HEAD
    tokenizer = backend.chat.tokenizer

    def bundled(enable_thinking: bool) -> list[int]:
        return tokenizer.apply_chat_template(
            MESSAGES,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
            tokenize=True,
            return_dict=True,
        )["input_ids"]

    rendered = backend.render_prompt(MESSAGES)
    if chat_format == "qwen3_hybrid":
        assert rendered == bundled(False)
        assert tokenizer.decode(rendered).endswith("<think>\n\n</think>\n\n")
    elif chat_format == "qwen3_instruct":
        assert rendered == bundled(True)
        assert "<think>" not in tokenizer.decode(rendered)
    else:  # tinker-cookbook's role_colon layout: each piece tokenized on its own
        pieces = ["System:", " Write a PyMC model.\n\n", "User:", " y = [1.2, 0.7]\n\n"]
        expected = [
            token
            for piece in [*pieces, "Assistant:"]
            for token in tokenizer(piece, add_special_tokens=False)["input_ids"]
        ]
        assert rendered == expected
        plain = "System: Write a PyMC model.\n\nUser: y = [1.2, 0.7]\n\nAssistant:"
        assert tokenizer.decode(rendered) == plain


def test_a_base_model_stops_at_the_next_turn_as_role_colon_does(make_backend, base_lm):
    """role_colon's stop string: sent instead of stop ids, its tokens kept in the completion
    (and its log P_F) and cut from the text; the end-of-text token still ends a sample."""
    server = FakeServer(base_lm, models=["Qwen/Qwen3-8B-Base", "Qwen/Qwen3-8B"])
    base = make_backend(config_for("tinker", policy__model_name="Qwen/Qwen3-8B-Base"), fake=server)
    (rollout,) = base.sample("dugongs", base.render_prompt(MESSAGES), [1.0])
    hybrid = make_backend(fake=server)
    hybrid.sample("dugongs", hybrid.render_prompt(MESSAGES), [1.0])
    assert server.sample_stops == [["\n\nUser:"], hybrid.chat.stop_ids]

    chat = base.chat
    turn_end = chat.tokenizer("x = 1\n\nUser:", add_special_tokens=False)["input_ids"]
    end_of_text = chat.tokenize_completion("x = 1")
    cut_short = end_of_text[:-1]
    assert chat.ends_with_stop(turn_end) and chat.ends_with_stop(end_of_text)
    assert not chat.ends_with_stop(cut_short)
    assert {chat.decode_completion(ids) for ids in (turn_end, end_of_text, cut_short)} == {"x = 1"}
    # The fake keeps the tokens that complete the stop string, as the service does.
    longer = [*turn_end, 88, 89]
    drawn = cut_at_stop_text(SampledIds(longer, True, [0.0] * len(longer)), ["\n\nUser:"])
    assert (drawn.completion_ids, drawn.truncated) == (turn_end, False)


def test_thinking_latent_needs_think_tags_and_other_models_need_a_spelled_out_family(
    make_backend,
):
    for model_name in ("Qwen/Qwen3-4B-Instruct-2507", "Qwen/Qwen3-8B-Base"):
        config = config_for("tinker", policy__model_name=model_name, policy__thinking="latent")
        with pytest.raises(ConfigError, match="thinking=latent needs think tags"):
            make_backend(config, fake=FakeServer(None, models=[model_name]))
    folder = str(qwen3_tokenizer_folder())
    config = config_for(
        "tinker",
        policy__model_name="Qwen/Qwen3.5-4B",
        policy__tokenizer=folder,
        policy__chat_format="qwen3_instruct",
        policy__head_size=151_700,
    )
    backend = make_backend(config, fake=FakeServer(None, models=["Qwen/Qwen3.5-4B"]))
    assert (backend.chat.chat_format, backend.head_size) == ("qwen3_instruct", 151_700)
    assert backend.flow.token_embedding.num_embeddings == 151_700
    config.policy.chat_format = "llama3"
    with pytest.raises(ConfigError, match="chat_format='llama3'"):
        make_backend(config, fake=FakeServer(None, models=["Qwen/Qwen3.5-4B"]))


def test_lora_target_modules_choose_the_tinker_blocks(make_backend, server):
    assert lora_blocks(["q_proj", "v_proj"]) == {
        "train_attn": True,
        "train_mlp": False,
        "train_unembed": False,
    }
    with pytest.raises(ConfigError, match="whole blocks"):
        lora_blocks(["q_proj", "qkv"])
    config = config_for("tinker")
    config.policy.lora_target_modules = ["gate_proj", "lm_head"]
    config.policy.lora_r = 8
    backend = make_backend(config)
    backend.sample("dugongs", backend.render_prompt(MESSAGES), [1.0])
    (created,) = server.lora_requests
    assert created == dict(
        base_model="Qwen/Qwen3-8B",
        rank=8,
        seed=0,
        train_mlp=True,
        train_attn=False,
        train_unembed=True,
    )


def test_build_backend_pairs_runner_and_policy(monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    with pytest.raises(ConfigError, match="go together"):
        build_backend(config_for("local", policy__kind="tinker"))
    with pytest.raises(ConfigError, match="go together"):
        build_backend(config_for("tinker", policy__kind="mock"))


# ---- checkpoints -------------------------------------------------------------------------


def test_save_and_load_restore_both_sides(make_backend, server, tmp_path):
    config = config_for("tinker", train__learning_rate=1e-2)
    objective = build_objective(config.objective)
    first = make_backend(config)
    batch = two_trajectories(first)
    first.train_step(batch, objective)
    first.save(tmp_path / "policy")

    saved = json.loads((tmp_path / "policy" / CHECKPOINT_FILE).read_text())
    assert saved["state_path"] in server.checkpoints
    assert saved["sampler_path"].startswith("tinker://") and saved["step"] == 1
    for path in (tmp_path / "policy").iterdir():
        assert FAKE_KEY.encode() not in path.read_bytes()
    assert {p.name for p in (tmp_path / "policy").iterdir()} == {CHECKPOINT_FILE, STATE_FILE}

    second = make_backend(config)
    second.load(tmp_path / "policy")
    assert torch.equal(second.log_z.values, first.log_z.values)
    prompt = first.render_prompt(MESSAGES)
    assert second.sample("dugongs", prompt, [1.0]) == first.sample("dugongs", prompt, [1.0])
    # Sampling after a load reads the recorded sampler weights; training restores the state.
    restore = "submit create_training_client_from_state_with_optimizer"
    assert "submit create_sampling_client" in server.events and restore not in server.events
    again = [backend.train_step(batch, objective) for backend in (first, second)]
    assert restore in server.events
    assert again[0]["loss"] == pytest.approx(again[1]["loss"], rel=1e-6)
    assert again[0]["log_z"] == pytest.approx(again[1]["log_z"], rel=1e-6)


def test_load_refuses_a_checkpoint_of_another_model(make_backend, tmp_path):
    first = make_backend()
    first.save(tmp_path)
    config = config_for("tinker")
    config.policy.lora_r = 4
    with pytest.raises(ValueError, match="lora_rank"):
        make_backend(config).load(tmp_path)


# ---- thinking: latent --------------------------------------------------------------------


def test_reference_think_log_prob_scores_the_think_span_under_the_base_model(make_backend, base_lm):
    config = config_for("tinker")
    config.policy.thinking = "latent"
    backend = make_backend(config)
    prompt = backend.render_prompt(MESSAGES)
    completion = backend.tokenize_completion("<think>\nnormal\n</think>\n\nx = 1")
    think_end = completion.index(backend.chat.think_end_id)

    (value,) = backend.reference_think_log_prob([prompt], [completion]).tolist()

    with torch.no_grad(), base_lm.disable_adapter():
        logits = base_lm(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    steps = logits[len(prompt) - 1 : -1].log_softmax(-1)
    expected = steps.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
    assert value == pytest.approx(float(expected[: think_end + 1].sum()), rel=1e-5)
    assert value != pytest.approx(float(expected.sum()), rel=1e-3)


# ---- the real service (opt-in) -----------------------------------------------------------


# Largest allowed |mean per-token difference| between the sampler's and the trainer's
# log-probs of one batch (nats per token). Both run the same weights with different kernels
# (inference vs training forward pass, bf16 on the service), so they differ slightly; this
# is tinker-cookbook's optim/kl_sample_train_v1 (rl/metrics.py, compute_kl_sample_train), which
# its guidance keeps under 0.01 in stable RL training. 0.05 leaves room for that noise while
# a real mismatch fails by far: a prompt/completion shift or a wrong prompt format scores
# other tokens (nats per token), a sampler left on old weights after an update drifts.
LIVE_LOG_PROB_TOLERANCE = 0.05


def sample_step_refresh_resume(
    config: Config, directory: Path, *, expect_stops: bool
) -> dict[str, float]:
    """What a first real run does, through build_backend (the live test and its fake twin):
    sample, step, step again after the sampler refresh, save, resume, step, release.

    Checks at each step that the sampler's log-probs of the batch agree with the trainer's
    (LIVE_LOG_PROB_TOLERANCE), so the refreshed sampler carries the updated weights; that the
    resumed backend's sampler scores the batch as the saved one did; and that the resumed
    training client steps from the saved state. Returns the measured per-token gaps.
    """
    objective = build_objective(config.objective)
    backend = build_backend(config)
    prompt = backend.render_prompt([{"role": "user", "content": "Reply with the word yes."}])
    gaps: dict[str, float] = {}

    def sampled_batch(policy) -> TrainBatch:
        rollouts = policy.sample("dugongs", prompt, [1.0, 1.0])
        if expect_stops:  # log P_F includes the decision to stop: the stop token comes back
            assert any(not rollout.truncated for rollout in rollouts), rollouts
        return TrainBatch(
            prompt_keys=["dugongs"] * 2,
            prompt_ids=[prompt] * 2,
            completion_ids=[list(rollout.completion_ids) for rollout in rollouts],
            log_reward=torch.tensor([0.0, -1.0]),
        )

    def agreeing_step(policy, name: str) -> dict[str, float]:
        batch = sampled_batch(policy)
        sampler_log_pf = policy.sequence_log_probs(batch.prompt_ids, batch.completion_ids)
        metrics = policy.train_step(batch, objective)  # trainer log-probs, then the update
        tokens = sum(len(ids) for ids in batch.completion_ids)
        assert metrics["tokens"] == tokens and metrics["log_pf_mean"] < 0
        # Mean over the batch of summed log-probs, times B, over all tokens: per token.
        gap = abs(float(sampler_log_pf.sum()) - metrics["log_pf_mean"] * 2) / tokens
        assert gap <= LIVE_LOG_PROB_TOLERANCE, f"{name}: sampler vs trainer {gap:.4f} nats/token"
        assert math.isfinite(metrics["loss"])
        gaps[name] = gap
        return metrics

    agreeing_step(backend, "step 1")
    agreeing_step(backend, "step 2, after the sampler refresh")
    assert backend.steps == 2
    backend.save(directory)
    try:
        saved = json.loads((directory / CHECKPOINT_FILE).read_text())
        assert saved["state_path"].startswith("tinker://")
        assert saved["sampler_path"].startswith("tinker://")
        check = sampled_batch(backend)
        before = backend.sequence_log_probs(check.prompt_ids, check.completion_ids)

        resumed = build_backend(config)
        resumed.load(directory)
        after = resumed.sequence_log_probs(check.prompt_ids, check.completion_ids)
        tokens = sum(len(ids) for ids in check.completion_ids)
        gaps["resumed sampler"] = float((after - before).abs().sum()) / tokens
        assert gaps["resumed sampler"] <= LIVE_LOG_PROB_TOLERANCE, gaps
        agreeing_step(resumed, "step 3, resumed from the saved state")
        assert resumed.steps == 3
    finally:
        build_backend(config).release_checkpoint(directory)
    return gaps


@pytest.mark.skipif(
    not os.environ.get("TINKER_API_KEY"), reason="live Tinker smoke test: set TINKER_API_KEY"
)
def test_live_tinker_samples_steps_resumes_and_agrees_with_its_sampler(tmp_path):
    """Costs a few cents: model check, eight samples, three training steps, one checkpoint
    (deleted at the end), a resume. SYNTHSTATS_TINKER_MODEL picks another model."""
    config = config_for("tinker", policy__max_new_tokens=64, policy__retry_backoff_s=2.0)
    config.policy.model_name = os.environ.get("SYNTHSTATS_TINKER_MODEL", "Qwen/Qwen3-8B")
    config.policy.tokenizer = os.environ.get("SYNTHSTATS_TINKER_TOKENIZER", "")
    gaps = sample_step_refresh_resume(config, tmp_path, expect_stops=True)
    print("sampler vs trainer, nats per token:", gaps)


def test_the_live_smoke_test_runs_on_the_fake_service(server, monkeypatch, tmp_path):
    """The live test's own code, on the fake: every call it makes exists there, and the fake
    sampler and trainer (one model) agree far inside the tolerance."""
    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.setattr("synthstats.backends.tinker.connect", server.connection)
    gaps = sample_step_refresh_resume(config_for("tinker"), tmp_path, expect_stops=False)
    assert max(gaps.values()) < 1e-3, gaps
    assert "submit create_training_client_from_state_with_optimizer" in server.events
    assert len(server.applied_grads) == 3
    saved = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    assert {saved["state_path"], saved["sampler_path"]} <= set(server.deleted)  # released


# ---- the command line, against the fake -------------------------------------------------


class FailingJudge:
    """Stands in for JudgePool: scores every program as a failure, at once."""

    def __init__(self, config: object) -> None:
        pass

    def __enter__(self) -> FailingJudge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def score_async(self, env: object, programs: list[str]) -> Future:
        done: Future = Future()
        done.set_result([Score.failure("no_program", "stub judge") for _ in programs])
        return done


def test_cli_trains_and_resumes_with_runner_tinker(server, monkeypatch, tmp_path):
    """synthstats-train runner=tinker end to end; the test-only hook is the module's connect."""
    from click.testing import CliRunner

    from synthstats.cli import train
    from synthstats.envs import get_env
    from synthstats.train.checkpoint import latest_checkpoint

    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.setattr("synthstats.backends.tinker.connect", server.connection)
    # The judge is not under test: every program fails fast, with the reference fixed.
    monkeypatch.setattr("synthstats.train.run.JudgePool", FailingJudge)
    monkeypatch.setattr(
        "synthstats.train.run.get_env",
        lambda name: dataclasses.replace(get_env(name), reference_elpd=-60.0),
    )
    run_dir = tmp_path / "run"
    arguments = [
        "runner=tinker",
        "policy=tinker",
        "env=dugongs",
        "runner.train.batch_size=2",
        "runner.train.checkpoint_every=1",
        "policy.max_new_tokens=6",
        "--no-progress",
    ]
    first = CliRunner().invoke(train, [*arguments, "runner.train.steps=2", f"output_dir={run_dir}"])
    assert first.exit_code == 0, first.output
    assert len(server.applied_grads) == 2
    saved = json.loads((latest_checkpoint(run_dir) / "policy" / CHECKPOINT_FILE).read_text())
    assert saved["step"] == 2 and saved["state_path"] in server.checkpoints
    # The final sampler and state paths are kept apart from the pruned checkpoints.
    assert json.loads((run_dir / "final" / CHECKPOINT_FILE).read_text()) == saved

    resumed = CliRunner().invoke(train, [*arguments, "runner.train.steps=3", f"resume={run_dir}"])
    assert resumed.exit_code == 0, resumed.output
    assert "submit create_training_client_from_state_with_optimizer" in server.events
    assert len(server.applied_grads) == 3
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in metrics] == [0, 1, 2]
    for path in run_dir.rglob("*"):
        assert not path.is_file() or FAKE_KEY.encode() not in path.read_bytes(), path


def test_a_failed_step_reloads_the_last_checkpoint_in_process(base_lm, monkeypatch, tmp_path):
    """A forward-backward lost at step 3 (after the checkpoint at step 2): the run reloads
    that checkpoint in-process and ends exactly as a run without the failure; remote copies
    follow local pruning (two kept)."""
    from click.testing import CliRunner

    from synthstats.cli import train
    from synthstats.envs import get_env

    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.setattr("synthstats.train.run.JudgePool", FailingJudge)
    monkeypatch.setattr(
        "synthstats.train.run.get_env",
        lambda name: dataclasses.replace(get_env(name), reference_elpd=-60.0),
    )
    arguments = [
        "runner=tinker",
        "policy=tinker",
        "env=dugongs",
        "runner.train.steps=4",
        "runner.train.batch_size=2",
        "runner.train.checkpoint_every=1",
        "runner.train.learning_rate=0.01",
        "policy.max_new_tokens=6",
        "--no-progress",
    ]
    losses = {}
    for name, failures in (("clean", []), ("failed", [None, None, rate_limit_error()])):
        server = FakeServer(base_lm)
        server.failures["forward_backward_custom"] = list(failures)
        monkeypatch.setattr("synthstats.backends.tinker.connect", server.connection)
        run_dir = tmp_path / name
        result = CliRunner().invoke(train, [*arguments, f"output_dir={run_dir}"])
        assert result.exit_code == 0, result.output
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["loss"] for line in lines]
        assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]
        assert len(server.applied_grads) == 4
        # Checkpoints 1 and 2 were pruned locally, so their remote copies are gone.
        assert len(server.deleted) == 4
        assert all("step-000001" in p or "step-000002" in p for p in server.deleted)
        assert len(server.checkpoints) == 2
    assert "submit create_training_client_from_state_with_optimizer" in server.events
    assert losses["failed"] == losses["clean"]


def test_reloads_are_bounded_by_max_reloads(base_lm, monkeypatch, tmp_path):
    """A step that keeps failing: one reload (runner.train.max_reloads=1), then the run stops
    with the step's error, its last checkpoint intact for resume=."""
    from click.testing import CliRunner

    from synthstats.cli import train
    from synthstats.envs import get_env
    from synthstats.train.checkpoint import latest_checkpoint

    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.setattr("synthstats.train.run.JudgePool", FailingJudge)
    monkeypatch.setattr(
        "synthstats.train.run.get_env",
        lambda name: dataclasses.replace(get_env(name), reference_elpd=-60.0),
    )
    server = FakeServer(base_lm)
    server.failures["forward_backward_custom"] = [None, rate_limit_error(), rate_limit_error()]
    monkeypatch.setattr("synthstats.backends.tinker.connect", server.connection)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        train,
        [
            "runner=tinker",
            "policy=tinker",
            "env=dugongs",
            "runner.train.steps=3",
            "runner.train.batch_size=2",
            "runner.train.checkpoint_every=1",
            "runner.train.max_reloads=1",
            "policy.max_new_tokens=6",
            f"output_dir={run_dir}",
            "--no-progress",
        ],
    )
    assert result.exit_code != 0
    assert "reload the last checkpoint" in result.output
    assert server.events.count("submit forward_backward_custom") == 3
    assert latest_checkpoint(run_dir).name == "step-000001"


def test_remote_checkpoints_kept_or_released_with_a_clear_error_on_a_released_one(
    make_backend, server, tmp_path
):
    config = config_for("tinker")
    backend = make_backend(config)
    backend.train_step(two_trajectories(backend), build_objective(config.objective))
    backend.save(tmp_path / "one")
    backend.train_step(two_trajectories(backend), build_objective(config.objective))
    backend.save(tmp_path / "two")
    kept = make_backend(config_for("tinker", policy__remote_checkpoints="keep_all"))
    kept.release_checkpoint(tmp_path / "one")
    assert server.deleted == []
    backend.release_checkpoint(tmp_path / "two")  # the current one: never deleted
    assert server.deleted == []
    backend.release_checkpoint(tmp_path / "one")
    assert len(server.deleted) == 2
    stale = make_backend(config)
    stale.load(tmp_path / "one")
    with pytest.raises(TinkerFatalError, match="request error \\(user\\).*not found"):
        stale.sample("dugongs", stale.render_prompt(MESSAGES), [1.0])


def test_eval_of_a_tinker_run_samples_and_scores_its_recorded_sampler(
    server, monkeypatch, tmp_path
):
    """synthstats eval on a runner=tinker run (real judge): the checkpoint's sampler weights
    sample and score, with no training client, and every field is filled, log-probs included."""
    from click.testing import CliRunner

    from synthstats.cli import main, train
    from synthstats.train.checkpoint import latest_checkpoint

    monkeypatch.setenv("TINKER_API_KEY", FAKE_KEY)
    monkeypatch.setattr("synthstats.backends.tinker.connect", server.connection)
    run_dir = tmp_path / "run"
    arguments = [
        "runner=tinker",
        "policy=tinker",
        "env=dugongs",
        "judge=fast",
        "judge.workers=1",
        "runner.train.steps=1",
        "runner.train.batch_size=2",
        "runner.train.checkpoint_every=1",
        "policy.max_new_tokens=6",
        f"output_dir={run_dir}",
        "--no-progress",
    ]
    trained = CliRunner().invoke(train, arguments)
    assert trained.exit_code == 0, trained.output
    before = len(server.events)

    result = CliRunner().invoke(main, ["eval", str(run_dir), "--samples", "5", "--json"])
    assert result.exit_code == 0, result.output

    events = server.events[before:]
    assert "submit create_sampling_client" in events and "submit compute_logprobs" in events
    assert not any("training_client" in event for event in events), events
    report = json.loads((run_dir / "eval_report.json").read_text())
    assert report["policy_kind"] == "tinker" and report["step"] == 1 and report["samples"] == 5
    assert report["validity_rate"] == report["valid"] / report["samples"]
    assert sum(report["error_kinds"].values()) == report["samples"] - report["valid"]
    assert sum(report["reward_histogram"]["counts"]) == report["samples"]
    assert report["unique_valid_programs"] <= report["unique_programs"] <= report["samples"]
    assert (report["best_elpd"] is None) == (report["valid"] == 0)
    assert (report["best_program"] is None) == (report["valid"] == 0)
    assert (report["spearman_logp_logr"] is None) == (report["unique_valid_programs"] < 2)
    state = torch.load(latest_checkpoint(run_dir) / "policy" / STATE_FILE, weights_only=True)
    assert report["learned_log_z"] == pytest.approx(float(state["log_z"]["values"][0, 0]))
    for field in ("is_log_z", "is_log_z_se", "reward_temperature", "log_reward_mean"):
        assert report[field] is not None and math.isfinite(report[field]), field
    assert report["is_log_z_se"] >= 0
    for plot in ("eval_reward_histogram.png", "eval_logp_vs_logr.png"):
        assert (run_dir / plot).stat().st_size > 0, plot
