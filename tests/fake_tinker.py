"""A fake Tinker service at the SDK surface TinkerBackend calls; it never touches a network.

Everything crossing the surface is a real `tinker.types` object, every error is the class
the 0.38 SDK raises, and the "server" is a tiny PEFT Qwen3 whose LM head has Qwen3's full
151,936 outputs (the tokenizer names 151,669), in which sampling, forward passes, the
backward from the weights the SDK sends, AdamW steps and checkpoints really happen:

- futures: submission returns at once; the work runs on the client's own worker thread,
  in submission order (the service runs a client's requests in order), and `result(timeout)`
  returns it, raises its error, or raises TimeoutError while it has not finished.
- forward_backward_custom: a forward gives per-datum log-probs, then the SDK's own
  conversion (`TrainingClient._compute_custom_loss`, pinned tinker 0.38) calls the loss
  function on that worker thread and turns its gradient into weights = -dloss/dlogprobs,
  and the fake server backpropagates sum(-logprobs * weights) into the LoRA weights, as the
  service does (over the non-zero weights only, which changes nothing but the cost). Any
  failure of it (the loss function's own error included) surfaces at result() and poisons
  the client: its queued and later requests fail with the SDK's RuntimeError.
- optim_step: records the gradient it applies (before clipping), then steps AdamW.
- save_state / save_weights_for_sampler: refuse a name already saved (save_state unless
  overwrite=True) with a RequestFailedError of category user; a ttl_seconds expires the
  copy once `server.clock` passes it; the rest client deletes copies.
- save_weights_and_get_sampling_client: a snapshot of the weights at that moment;
  create_sampling_client(model_path=) serves saved sampler weights.
- sample: a seed applies to the whole request, as a service may apply it: all num_samples
  sequences of one request draw from the same seeded generator state, so they are equal.
  `stop` takes token ids or strings; with strings the end-of-text ids still stop, and a
  sample ends with the tokens that complete a stop string (as tinker-cookbook's role_colon
  parser expects of the service).
- compute_logprobs: the sampler's own forward pass, at temperature 1 as in the SDK (which
  sends SamplingParams' default temperature); prompt_logprobs_last_n scores only that suffix.
- queue reports: a training client passes them to its `_queue_state_logger` (a real
  QueueStateLogger) and a sampling client to itself, as in the SDK.

A Queued request is reported active while it then runs, as the SDK's polls see it.
`events` lists every submission and wait in order; `failures[request]` holds what the
next requests of that name do instead of answering: an exception (raised at result()),
HANG (never answers), Queued(seconds) (reported as queued, then answered), Returns(value)
(answers value instead), LOST (applied,
but the answer is lost with the SDK's RetryableException, as a 410 does), or STALL (the
submission itself blocks, as the SDK's lazy session start can).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tinker
import torch
from tinker import types
from tinker.lib.api_future_impl import QueueState, QueueStateObserver
from tinker.lib.queue_state_logger import QueueStateLogger
from tinker.lib.retryable_exception import RetryableException
from tinker.types import RequestErrorCategory
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from synthstats.backends.mock_model import (
    MOCK_ARCHITECTURE,
    MOCK_SEED,
    cached_model_folder,
    qwen3_tokenizer_folder,
)
from synthstats.backends.sampling import SampledIds, sample_completions
from synthstats.backends.tinker_chat import QWEN3_HEAD
from synthstats.backends.tinker_connection import TinkerConnection

HANG = object()
LOST = object()
STALL = object()
POISONED = "A previous request failed; this TrainingClient is poisoned"


@dataclass(frozen=True)
class Queued:
    """The request waits `seconds` in the queue, reported every `every` s, then runs."""

    seconds: float
    state: QueueState = QueueState.PAUSED_CAPACITY
    every: float = 0.02


@dataclass(frozen=True)
class Returns:
    """The request answers `value` instead of doing its work."""

    value: Any


def status_error(cls: type[tinker.APIStatusError], status: int) -> tinker.APIStatusError:
    """The error the SDK raises for an HTTP status (cls: the SDK's class for it)."""
    request = httpx.Request("POST", "https://tinker.invalid/api/v1/fake")
    return cls(f"{status} (fake)", response=httpx.Response(status, request=request), body=None)


def rate_limit_error() -> tinker.RateLimitError:
    return status_error(tinker.RateLimitError, 429)


def request_failed(category: RequestErrorCategory, message: str) -> tinker.RequestFailedError:
    return tinker.RequestFailedError(
        f"Request failed: {message} (fake)", request_id="fake", category=category
    )


def promise_expired() -> RetryableException:
    """What the SDK raises when the service answers a result poll with 410."""
    return RetryableException(message="Promise expired/broken for request fake")


def service_model_folder() -> Path:
    """A tiny random Qwen3 with Qwen3's real head size (151,936) and tokenizer, cached."""

    def write(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_folder(), local_files_only=True)
        stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        config = Qwen3Config(
            vocab_size=QWEN3_HEAD,
            bos_token_id=None,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
            **MOCK_ARCHITECTURE,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MOCK_SEED)
            AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    spec = [MOCK_ARCHITECTURE, MOCK_SEED, QWEN3_HEAD]
    return cached_model_folder("mock-models", "qwen3-tiny-full-head", spec, write)


class FakeFuture:
    """An APIFuture over a concurrent future the client's worker thread decides."""

    def __init__(self, server: FakeServer, what: str, future: concurrent.futures.Future) -> None:
        self.server, self.what, self._future = server, what, future

    def result(self, timeout: float | None = None) -> Any:
        self.server.events.append(f"wait {self.what}")
        return self._future.result(timeout)


class Worker:
    """One thread that runs a client's requests in submission order."""

    def __init__(self, server: FakeServer, observer: Callable[[], Any] | None = None) -> None:
        self.server = server
        self.observer = observer  # the client's queue observer, looked up when it reports
        self.poisoned: BaseException | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fake")

    def submit(self, what: str, work: Callable[[], Any], *, poisons: bool = False) -> FakeFuture:
        server = self.server
        server.events.append(f"submit {what}")
        failure = server.failures[what].pop(0) if server.failures[what] else None
        if failure is STALL:
            server.unstall.wait(10.0)
            failure = None
        future: concurrent.futures.Future = concurrent.futures.Future()
        if failure is HANG:
            return FakeFuture(server, what, future)

        def run() -> None:
            try:
                if self.poisoned is not None:
                    raise RuntimeError(f"{POISONED} (fake)") from self.poisoned
                if isinstance(failure, BaseException):
                    raise failure
                if isinstance(failure, Queued):
                    self._queue(failure)
                    with self._reporting(QueueState.ACTIVE, failure.every):
                        value = work()
                else:
                    value = failure.value if isinstance(failure, Returns) else work()
                if failure is LOST:
                    raise promise_expired()
                future.set_result(value)
            except BaseException as error:
                if poisons and self.poisoned is None:
                    self.poisoned = error
                future.set_exception(error)

        self._executor.submit(run)
        return FakeFuture(server, what, future)

    @contextlib.contextmanager
    def _reporting(self, state: QueueState, every: float) -> Iterator[None]:
        """Report `state` every `every` s while the body runs (a polled, running request)."""
        done = threading.Event()

        def report() -> None:
            while not done.wait(every):
                self.observer().on_queue_state_change(state, None)

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        try:
            yield
        finally:
            done.set()
            reporter.join()

    def _queue(self, queued: Queued) -> None:
        until = time.monotonic() + queued.seconds
        while time.monotonic() < until:
            if self.observer is not None:
                self.observer().on_queue_state_change(queued.state, "capacity (fake)")
            time.sleep(queued.every)


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
        self.expires: dict[str, float] = {}
        self.deleted: list[str] = []
        self.clock = 0.0  # seconds, for ttl_seconds; tests move it
        self.lora_requests: list[dict[str, Any]] = []
        self.sample_requests: list[tuple[int, int | None]] = []  # (num_samples, seed)
        self.sample_stops: list[Any] = []  # SamplingParams.stop of each request
        self.sample_versions: list[int] = []
        self.unstall = threading.Event()
        self.worker = Worker(self)
        self._ids = itertools.count()

    def new_id(self) -> int:
        return next(self._ids)

    def connection(self) -> TinkerConnection:
        return TinkerConnection(service=FakeService(self), rest=FakeRest(self))

    def saved(self, store: dict[str, Any], path: str) -> Any:
        """A saved copy, or the service's refusal of a path deleted, expired or never saved."""
        if path not in store or self.clock >= self.expires.get(path, float("inf")):
            raise request_failed(RequestErrorCategory.User, f"checkpoint {path} not found")
        return store[path]

    def store(self, store: dict[str, Any], path: str, value: Any, ttl: int | None, *, overwrite):
        if path in store and not overwrite:
            raise request_failed(RequestErrorCategory.User, f"checkpoint {path} already exists")
        store[path] = value
        if ttl is not None:
            self.expires[path] = self.clock + ttl


class FakeRest:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def get_server_capabilities(self) -> FakeFuture:
        supported = [
            types.SupportedModel(model_name=name, trainable=True, sampleable=True)
            for name in self.server.models
        ]
        return self.server.worker.submit(
            "get_server_capabilities",
            lambda: types.GetServerCapabilitiesResponse(supported_models=supported),
        )

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> FakeFuture:
        server = self.server

        def delete() -> None:
            store = server.checkpoints if "/weights/" in tinker_path else server.sampler_weights
            if tinker_path not in store:
                raise status_error(tinker.NotFoundError, 404)
            del store[tinker_path]
            server.deleted.append(tinker_path)

        return server.worker.submit("delete_checkpoint", delete)


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
        return self.server.worker.submit(
            "create_lora_training_client", lambda: FakeTrainingClient(self.server)
        )

    def create_training_client_from_state_with_optimizer(self, path: str) -> FakeFuture:
        def restore() -> FakeTrainingClient:
            saved = self.server.saved(self.server.checkpoints, path)
            client = FakeTrainingClient(self.server)
            client.lm.load_state_dict(saved["lm"])
            client.optimizer.load_state_dict(saved["optimizer"])
            client.version = saved["version"]
            return client

        return self.server.worker.submit(
            "create_training_client_from_state_with_optimizer", restore
        )

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None
    ) -> FakeFuture:
        if model_path is not None:

            def saved() -> FakeSamplingClient:
                lm, version = self.server.saved(self.server.sampler_weights, model_path)
                return FakeSamplingClient(self.server, lm, version=version)

            return self.server.worker.submit("create_sampling_client", saved)
        assert base_model in self.server.models
        return self.server.worker.submit(
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
        self._queue_state_logger = QueueStateLogger(self.run_id, "Training")
        self.worker = Worker(server, observer=lambda: self._queue_state_logger)

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

        return self.worker.submit("forward_backward_custom", run, poisons=True)

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

        return self.worker.submit("optim_step", run)

    def save_state(
        self, name: str, ttl_seconds: int | None = None, overwrite: bool = False
    ) -> FakeFuture:
        def run() -> types.SaveWeightsResponse:
            path = f"tinker://{self.run_id}/weights/{name}"
            state = {
                "lm": copy.deepcopy(self.lm.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "version": self.version,
            }
            self.server.store(
                self.server.checkpoints, path, state, ttl_seconds, overwrite=overwrite
            )
            return types.SaveWeightsResponse(path=path)

        return self.worker.submit("save_state", run)

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None = None) -> FakeFuture:
        def run() -> types.SaveWeightsForSamplerResponse:
            path = f"tinker://{self.run_id}/sampler_weights/{name}"
            weights = (copy.deepcopy(self.lm), self.version)
            self.server.store(
                self.server.sampler_weights, path, weights, ttl_seconds, overwrite=False
            )
            return types.SaveWeightsForSamplerResponse(path=path)

        return self.worker.submit("save_weights_for_sampler", run)

    def save_weights_and_get_sampling_client(self) -> FakeFuture:
        return self.worker.submit(
            "save_weights_and_get_sampling_client",
            lambda: FakeSamplingClient(self.server, copy.deepcopy(self.lm), version=self.version),
        )


class FakeSamplingClient(QueueStateObserver):
    """Samples from (and scores under) a fixed copy of the weights, or the bare base model.

    Like the SDK's SamplingClient it is its own queue observer.
    """

    def __init__(self, server: FakeServer, lm: nn.Module, *, version: int, base: bool = False):
        self.server, self.lm, self.version, self.base = server, lm, version, base
        self.queue_reports: list[QueueState] = []
        self.worker = Worker(server, observer=lambda: self)

    def on_queue_state_change(
        self, queue_state: QueueState, queue_state_reason: str | None
    ) -> None:
        self.queue_reports.append(queue_state)

    def _adapter(self) -> Any:
        return self.lm.disable_adapter() if self.base else contextlib.nullcontext()

    def sample(
        self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams
    ) -> FakeFuture:
        self.server.sample_versions.append(self.version)
        self.server.sample_requests.append((num_samples, sampling_params.seed))
        self.server.sample_stops.append(sampling_params.stop)

        stop = sampling_params.stop
        stop_texts = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
        stop_ids = list(self.lm.config.eos_token_id) if stop_texts else list(stop)

        def draw() -> SampledIds:
            generator = torch.Generator()
            if sampling_params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(sampling_params.seed)
            with self._adapter():
                (drawn,) = sample_completions(
                    self.lm,
                    prompt.to_ints(),
                    torch.tensor([float(sampling_params.temperature)]),
                    max_new_tokens=sampling_params.max_tokens,
                    stop_ids=stop_ids,
                    vocab_size=self.lm.config.vocab_size,  # the whole head, as the service
                    generator=generator,
                )
            return cut_at_stop_text(drawn, stop_texts)

        def run() -> types.SampleResponse:
            drawn = [draw() for _ in range(num_samples)]
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

        return self.worker.submit("sample", run)

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

        return self.worker.submit("compute_logprobs", run)


def cut_at_stop_text(drawn: SampledIds, stop_texts: Sequence[str]) -> SampledIds:
    """drawn up to the first token whose text completes a stop string, which is kept."""
    if not stop_texts:
        return drawn
    tokenizer = service_tokenizer()
    for end in range(1, len(drawn.completion_ids) + 1):
        if any(text in tokenizer.decode(drawn.completion_ids[:end]) for text in stop_texts):
            return SampledIds(drawn.completion_ids[:end], False, drawn.log_probs[:end])
    return drawn


@functools.cache
def service_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(service_model_folder(), local_files_only=True)


def token_logprobs(
    lm: nn.Module, tokens: Sequence[int], targets: Tensor, positions: Tensor
) -> Tensor:
    """log p(targets[i] | tokens[:i+1]) at `positions`, at temperature 1, over the whole head.

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
