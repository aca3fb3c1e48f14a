"""A fake Tinker service at the SDK surface TinkerBackend calls; it never touches a network.

Everything crossing the surface is a real `tinker.types` object, and the "server" is a
tiny PEFT Qwen3 in which sampling, forward passes, the backward from the weights the SDK
sends, AdamW steps and checkpoints really happen:

- futures: work runs at submission (the service runs a client's requests in order);
  `result(timeout)` returns it, raises an injected error, or never answers (HANG).
- forward_backward_custom: a forward gives per-datum log-probs, then the SDK's own
  conversion (`TrainingClient._compute_custom_loss`, pinned tinker 0.38) calls the loss
  function and turns its gradient into weights = -dloss/dlogprobs, and the fake server
  backpropagates sum(-logprobs * weights) into the LoRA weights, as the service does
  (over the non-zero weights only, which changes nothing but the cost). A failed
  forward-backward poisons the training client, as in the SDK.
- optim_step: records the gradient it applies (before clipping), then steps AdamW.
- save_weights_and_get_sampling_client: a snapshot of the weights at that moment;
  save_weights_for_sampler stores one under its path, which create_sampling_client(model_path=)
  serves.
- compute_logprobs: the sampler's own forward pass, at temperature 1 as in the SDK (which
  sends SamplingParams' default temperature); prompt_logprobs_last_n scores only that suffix.

`events` lists every submission and wait in order; `failures[request]` holds errors (or
HANG) that the next requests of that name answer with.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import numpy as np
import tinker
import torch
from tinker import types
from torch import Tensor, nn

from synthstats.backends.sampling import sample_completions
from synthstats.backends.tinker_connection import TinkerConnection

HANG = object()


def rate_limit_error() -> tinker.RateLimitError:
    """The error the SDK raises for HTTP 429."""
    request = httpx.Request("POST", "https://tinker.invalid/api/v1/sample")
    response = httpx.Response(429, request=request)
    return tinker.RateLimitError("rate limited (fake)", response=response, body=None)


class FakeFuture:
    """An APIFuture that is already decided: a value, an error, or no answer ever."""

    def __init__(self, server: FakeServer, what: str, *, value: Any = None, error: Any = None):
        self.server, self.what, self.value, self.error = server, what, value, error

    def result(self, timeout: float | None = None) -> Any:
        self.server.events.append(f"wait {self.what}")
        if self.error is HANG:
            return concurrent.futures.Future().result(timeout)  # raises TimeoutError
        if self.error is not None:
            raise self.error
        return self.value


class FakeServer:
    """The shared state of the fake service: base model, checkpoints, logs, failures."""

    def __init__(self, base_lm: nn.Module, *, models: Sequence[str] = ("Qwen/Qwen3-8B",)):
        self.base_lm = base_lm
        self.models = list(models)
        self.events: list[str] = []
        self.failures: dict[str, list[Any]] = defaultdict(list)
        self.applied_grads: list[dict[str, Tensor]] = []
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.sampler_weights: dict[str, tuple[nn.Module, int]] = {}
        self.lora_requests: list[dict[str, Any]] = []
        self.sample_versions: list[int] = []
        self._ids = itertools.count()

    def submit(self, what: str, work: Callable[[], Any]) -> FakeFuture:
        self.events.append(f"submit {what}")
        failure = self.failures[what].pop(0) if self.failures[what] else None
        if failure is not None:
            return FakeFuture(self, what, error=failure)
        return FakeFuture(self, what, value=work())

    def new_id(self) -> int:
        return next(self._ids)

    def connection(self) -> TinkerConnection:
        return TinkerConnection(service=FakeService(self), rest=FakeRest(self))


class FakeRest:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def get_server_capabilities(self) -> FakeFuture:
        supported = [
            types.SupportedModel(model_name=name, trainable=True, sampleable=True)
            for name in self.server.models
        ]
        return self.server.submit(
            "get_server_capabilities",
            lambda: types.GetServerCapabilitiesResponse(supported_models=supported),
        )


class FakeService:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
    ) -> FakeFuture:
        self.server.lora_requests.append(
            dict(
                base_model=base_model,
                rank=rank,
                seed=seed,
                train_mlp=train_mlp,
                train_attn=train_attn,
                train_unembed=train_unembed,
            )
        )
        return self.server.submit(
            "create_lora_training_client", lambda: FakeTrainingClient(self.server)
        )

    def create_training_client_from_state_with_optimizer(self, path: str) -> FakeFuture:
        def restore() -> FakeTrainingClient:
            saved = self.server.checkpoints[path]
            client = FakeTrainingClient(self.server)
            client.lm.load_state_dict(saved["lm"])
            client.optimizer.load_state_dict(saved["optimizer"])
            client.version = saved["version"]
            return client

        return self.server.submit("create_training_client_from_state_with_optimizer", restore)

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None
    ) -> FakeFuture:
        if model_path is not None:

            def saved() -> FakeSamplingClient:
                lm, version = self.server.sampler_weights[model_path]
                return FakeSamplingClient(self.server, lm, version=version)

            return self.server.submit("create_sampling_client", saved)
        assert base_model in self.server.models
        return self.server.submit(
            "create_sampling_client",
            lambda: FakeSamplingClient(self.server, self.server.base_lm, version=-1, base=True),
        )


class FakeTrainingClient:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.run_id = f"fake-run-{server.new_id()}"
        self.lm = copy.deepcopy(server.base_lm).train()
        self.params = {n: p for n, p in self.lm.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=0.0, weight_decay=0.0)
        self.version = 0
        self.poisoned = False

    def _submit(self, what: str, work: Callable[[], Any]) -> FakeFuture:
        if self.poisoned:
            error = RuntimeError("A previous request failed; this TrainingClient is poisoned")
            return FakeFuture(self.server, what, error=error)
        future = self.server.submit(what, work)
        if future.error is not None and what == "forward_backward_custom":
            self.poisoned = True
        return future

    def _logprobs(self, datum: types.Datum, positions: Tensor | None = None) -> Tensor:
        """log p(target_tokens[i] | model_input[:i+1]) at `positions` (default: all)."""
        targets = datum.loss_fn_inputs["target_tokens"].to_torch().long()
        if positions is None:
            positions = torch.arange(len(targets))
        return token_logprobs(self.lm, datum.model_input.to_ints(), targets, positions)

    def forward_backward_custom(self, data: list[types.Datum], loss_fn: Any) -> FakeFuture:
        def run() -> types.ForwardBackwardOutput:
            with torch.no_grad():
                outputs = [
                    {"logprobs": types.TensorData.from_torch(self._logprobs(datum))}
                    for datum in data
                ]
            forward = types.ForwardBackwardOutput(
                loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs
            )
            custom = tinker.TrainingClient._compute_custom_loss(data, loss_fn, forward)
            for datum in custom.data:
                weights = datum.loss_fn_inputs["weights"].to_torch().float()
                weighted = weights.nonzero().squeeze(-1)
                (-(self._logprobs(datum, weighted) * weights[weighted]).sum()).backward()
            return types.ForwardBackwardOutput(
                loss_fn_output_type="ArrayRecord",
                loss_fn_outputs=outputs,
                metrics={**custom.metrics, "loss:sum": custom.loss_sum},
            )

        return self._submit("forward_backward_custom", run)

    def optim_step(self, params: types.AdamParams) -> FakeFuture:
        def run() -> types.OptimStepResponse:
            grads = {
                n: p.grad.detach().clone() for n, p in self.params.items() if p.grad is not None
            }
            self.server.applied_grads.append(grads)
            for group in self.optimizer.param_groups:
                group.update(
                    lr=params.learning_rate,
                    betas=(params.beta1, params.beta2),
                    eps=params.eps,
                    weight_decay=params.weight_decay,
                )
            if params.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params.values(), params.grad_clip_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.version += 1
            return types.OptimStepResponse(metrics={"fake_step": float(self.version)})

        return self._submit("optim_step", run)

    def save_state(self, name: str, overwrite: bool = False) -> FakeFuture:
        def run() -> types.SaveWeightsResponse:
            path = f"tinker://{self.run_id}/weights/{name}"
            assert overwrite or path not in self.server.checkpoints
            self.server.checkpoints[path] = {
                "lm": copy.deepcopy(self.lm.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "version": self.version,
            }
            return types.SaveWeightsResponse(path=path)

        return self._submit("save_state", run)

    def save_weights_for_sampler(self, name: str) -> FakeFuture:
        def run() -> types.SaveWeightsForSamplerResponse:
            path = f"tinker://{self.run_id}/sampler_weights/{name}"
            self.server.sampler_weights[path] = (copy.deepcopy(self.lm), self.version)
            return types.SaveWeightsForSamplerResponse(path=path)

        return self._submit("save_weights_for_sampler", run)

    def save_weights_and_get_sampling_client(self) -> FakeFuture:
        return self._submit(
            "save_weights_and_get_sampling_client",
            lambda: FakeSamplingClient(self.server, copy.deepcopy(self.lm), version=self.version),
        )


class FakeSamplingClient:
    """Samples from (and scores under) a fixed copy of the weights, or the bare base model."""

    def __init__(self, server: FakeServer, lm: nn.Module, *, version: int, base: bool = False):
        self.server, self.lm, self.version, self.base = server, lm, version, base

    def _adapter(self) -> Any:
        return self.lm.disable_adapter() if self.base else contextlib.nullcontext()

    def sample(
        self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams
    ) -> FakeFuture:
        self.server.sample_versions.append(self.version)

        def run() -> types.SampleResponse:
            generator = torch.Generator().manual_seed(sampling_params.seed)
            temperatures = torch.full((num_samples,), float(sampling_params.temperature))
            with self._adapter():
                drawn = sample_completions(
                    self.lm,
                    prompt.to_ints(),
                    temperatures,
                    max_new_tokens=sampling_params.max_tokens,
                    stop_ids=list(sampling_params.stop),
                    vocab_size=self.lm.config.vocab_size,
                    generator=generator,
                )
            return types.SampleResponse(
                sequences=[
                    types.SampledSequence(
                        stop_reason="length" if sampled.truncated else "stop",
                        sequence_id=f"seq-{self.server.new_id()}",
                        tokens_np=np.asarray(sampled.completion_ids, dtype=np.int32),
                    )
                    for sampled in drawn
                ]
            )

        return self.server.submit("sample", run)

    def compute_logprobs(
        self, prompt: types.ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> FakeFuture:
        tokens = prompt.to_ints()
        first = 1 if prompt_logprobs_last_n is None else len(tokens) - prompt_logprobs_last_n
        assert 1 <= first < len(tokens), "the SDK refuses this prompt_logprobs_last_n"

        def run() -> list[float | None]:
            targets = torch.tensor(tokens[1:])
            with torch.no_grad(), self._adapter():
                scores = token_logprobs(
                    self.lm, tokens[:-1], targets, torch.arange(first - 1, len(targets))
                )
            return [None] * first + scores.tolist()

        return self.server.submit("compute_logprobs", run)


def token_logprobs(
    lm: nn.Module, tokens: Sequence[int], targets: Tensor, positions: Tensor
) -> Tensor:
    """log p(targets[i] | tokens[:i+1]) at `positions`, at temperature 1.

    The LM head (151k outputs) runs only at those positions, in chunks: the backward needs
    just the weighted ones, and a long prompt's full logits would cost seconds.
    """
    model = lm.get_base_model()
    hidden = model.get_decoder()(input_ids=torch.tensor([list(tokens)])).last_hidden_state[0]
    chunks = []
    for chunk in positions.split(128):
        logits = model.get_output_embeddings()(hidden[chunk]).float()
        chunks.append(logits.log_softmax(-1).gather(-1, targets[chunk, None]).squeeze(-1))
    return torch.cat(chunks)
