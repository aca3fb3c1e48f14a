"""The Tinker policy: LoRA sampling and training on Thinking Machines' hosted service.

The base model and its LoRA weights live on the service; the log Z table, the prefix flow
network and their torch optimizer live here. One training step:

    forward_backward_custom(datums, loss_fn)   the service returns trainer-side log-probs
                                               (temperature 1, over the model's whole head)
                                               with gradient; loss_fn runs the shared
                                               objective with the local log Z and flows on
                                               the SDK's loss thread; the SDK sends
                                               -dloss/dlogprobs back
    optim_step(AdamParams)                     submitted before waiting on the above
    local Adam step                            log Z and flow network, once grads are in

The next sample() takes a sampling client on the new weights: the checkpoint's sampler
weights when save() already wrote them for this step (saved once), else an ephemeral
save_weights_and_get_sampling_client().

Faults (tinker_retry): transient errors are retried, fatal ones stop with a clear message,
a queued request is waited for. A failed forward-backward poisons the SDK's training
client, so the step raises TinkerStepError (a PolicyStepError): the loop reloads the last
checkpoint in-process, which makes fresh clients from the saved state.

Checkpoint layout written by `save`:
    tinker_checkpoint.json   base model, LoRA rank, step, tinker:// paths of the training
                             state (resume) and of the sampler weights (synthstats eval)
    policy_state.pt          log Z table, flow network, local optimizer, sampling RNG
Remote copies follow the local retention: `release_checkpoint` deletes the ones a pruned
folder names (policy.remote_checkpoints=keep_all keeps them).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tinker import types
from torch import Tensor

from synthstats.backends.base import Rollout, TrainBatch
from synthstats.backends.policy_module import TrajectoryScores, objective_loss
from synthstats.backends.tinker_chat import ChatTokens, load_tokenizer, model_family
from synthstats.backends.tinker_connection import (
    TinkerConnection,
    check_model_supported,
    connect,
    require_credentials,
)
from synthstats.backends.tinker_datums import (
    completion_log_probs,
    padded_completions,
    scored_completion,
    trajectory_datum,
)
from synthstats.backends.tinker_queue import QueueWatch, watch_queue
from synthstats.backends.tinker_retry import (
    RetryPolicy,
    TinkerBackendError,
    TinkerFatalError,
    TinkerStepError,
    explained,
    is_transient,
    request,
    wait,
    wait_with_retries,
    with_retries,
)
from synthstats.config import ConfigError, ObjectiveConfig, PolicyConfig, TrainConfig
from synthstats.objectives import (
    FlowInputs,
    LogZTable,
    Objective,
    PrefixFlowNet,
    build_objective,
    think_log_prob,
    think_span_mask,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "tinker_checkpoint.json"
STATE_FILE = "policy_state.pt"

# Tinker trains LoRA on whole blocks; each local target module name selects its block.
_LORA_BLOCKS = {
    "train_attn": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "train_mlp": {"gate_proj", "up_proj", "down_proj"},
    "train_unembed": {"lm_head"},
}


class TinkerBackend:
    """A hosted LoRA policy with a local log Z table and prefix flow network."""

    def __init__(
        self,
        *,
        policy: PolicyConfig,
        train: TrainConfig,
        objective: ObjectiveConfig,
        prompt_keys: Sequence[str],
        seed: int = 0,
        connection: TinkerConnection | None = None,
    ) -> None:
        require_credentials()
        self.failure_weight = objective.failure_weight
        needs_flow = build_objective(objective).needs_flow
        if needs_flow and objective.flow_estimator != "prefix_net":
            raise ConfigError(
                "Tinker does not expose hidden states: use objective.flow_estimator=prefix_net"
            )
        self.policy = policy
        self.seed = seed
        self.max_grad_norm = train.max_grad_norm
        self.retry = RetryPolicy(
            timeout_s=policy.request_timeout_s,
            max_retries=policy.max_retries,
            backoff_s=policy.retry_backoff_s,
            queue_timeout_s=policy.queue_timeout_s,
        )
        self.lora_blocks = lora_blocks(policy.lora_target_modules)
        self.family = model_family(policy)
        self.chat = ChatTokens(
            load_tokenizer(policy, self.family),
            chat_format=self.family.chat_format,
            enable_thinking=policy.thinking != "off",
        )
        # The service samples over the whole LM head, beyond the tokenizer's last id.
        self.head_size = self.family.head_size
        if self.head_size < len(self.chat.tokenizer):
            raise ConfigError(
                f"{policy.model_name}: head size {self.head_size} is below the tokenizer's "
                f"{len(self.chat.tokenizer)} ids; check policy.head_size"
            )
        self.adam = types.AdamParams(
            learning_rate=train.learning_rate,
            beta1=policy.adam_beta1,
            beta2=policy.adam_beta2,
            eps=policy.adam_eps,
            grad_clip_norm=train.max_grad_norm,
        )
        self.connection = connection or connect()
        check_model_supported(self.connection.rest, policy.model_name, self.retry)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.log_z = LogZTable(prompt_keys) if objective.log_z == "learned" else None
            self.flow = (
                PrefixFlowNet(prompt_keys, vocab_size=self.head_size) if needs_flow else None
            )
        groups = []
        if self.log_z is not None:
            groups.append(
                {"name": "log_z", "params": [self.log_z.values], "lr": objective.log_z_lr}
            )
        if self.flow is not None:
            groups.append(
                {
                    "name": "flow",
                    "params": list(self.flow.parameters()),
                    "lr": train.flow_learning_rate,
                }
            )
        betas = (policy.adam_beta1, policy.adam_beta2)
        self.optimizer = (
            torch.optim.Adam(groups, betas=betas, eps=policy.adam_eps) if groups else None
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self._training: Any = None
        self._training_queue: QueueWatch | None = None
        self._sampler: Any = None
        self._sampler_queue: QueueWatch | None = None
        self._reference: Any = None
        self._saved: dict[str, Any] | None = None
        self._broken: str | None = None

    # ---- tokens -------------------------------------------------------------------------

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        return self.chat.render_prompt(messages)

    def tokenize_completion(self, text: str) -> list[int]:
        return self.chat.tokenize_completion(text)

    def decode_completion(self, completion_ids: Sequence[int]) -> str:
        return self.chat.decode_completion(completion_ids)

    # ---- sampling -----------------------------------------------------------------------

    def sample(
        self, prompt_key: str, prompt_ids: Sequence[int], temperatures: Sequence[float]
    ) -> list[Rollout]:
        if any(temperature <= 0 for temperature in temperatures):
            raise ValueError(f"sampling temperatures must be > 0, got {list(temperatures)}")
        sampler = self._sampling_client()
        prompt = types.ModelInput.from_ints(list(prompt_ids))
        # One request per sample, each with its own seed: a seed applies to a whole request,
        # so num_samples > 1 under one seed may draw one completion n times. Seeds are drawn
        # once, so a retried request draws the same completion.
        params = [self._sampling_params(temperature) for temperature in temperatures]

        def attempt() -> list[Any]:
            futures = [sampler.sample(prompt, 1, each) for each in params]
            return [wait(f, "sampling", self.retry, self._sampler_queue) for f in futures]

        responses = with_retries(attempt, "sampling", self.retry)
        completions: list[list[int]] = []
        for response in responses:
            if len(response.sequences) != 1:
                raise TinkerBackendError(
                    f"Tinker returned {len(response.sequences)} samples, asked for 1"
                )
            completions.append(self._checked_ids(response.sequences[0].tokens, "sampled"))
        return [
            Rollout(
                prompt_key=prompt_key,
                prompt_ids=tuple(prompt_ids),
                completion_ids=tuple(ids),
                text=self.chat.decode_completion(ids),
                truncated=not self.chat.ends_with_stop(ids),
                temperature=float(temperature),
            )
            for ids, temperature in zip(completions, temperatures, strict=True)
        ]

    def _checked_ids(self, ids: Sequence[int], what: str) -> list[int]:
        """ids as a list, refused before they reach the loss if the model's head lacks one."""
        ids = list(ids)
        outside = [token for token in ids if not 0 <= token < self.head_size]
        if outside:
            raise TinkerBackendError(
                f"{what} token id {outside[0]} is outside {self.policy.model_name}'s LM head "
                f"({self.head_size} ids, from the family table or policy.head_size): the "
                "head size is wrong for this model; set policy.head_size to its vocab_size"
            )
        return ids

    def _sampling_params(self, temperature: float) -> types.SamplingParams:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        return types.SamplingParams(
            max_tokens=self.policy.max_new_tokens,
            temperature=temperature,
            stop=self.chat.sampling_stop(),
            seed=seed,
        )

    # ---- learning -----------------------------------------------------------------------

    def train_step(self, batch: TrainBatch, objective: Objective) -> dict[str, float]:
        if objective.needs_flow and self.flow is None:
            raise ValueError(
                "this objective needs a flow estimator, but the backend was built for "
                "objective.loss=tb; build it from the same objective config"
            )
        self._check_usable()
        for ids in batch.completion_ids:
            self._checked_ids(ids, "training")
        training = self._training_client()
        data = [
            trajectory_datum(prompt, completion)
            for prompt, completion in zip(batch.prompt_ids, batch.completion_ids, strict=True)
        ]
        recorded: dict[str, float] = {}
        loss_fn = self._loss_fn(batch, objective, recorded)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        # Both requests go out before either is awaited; the service runs them in order.
        queue = self._training_queue
        backward = training.forward_backward_custom(data, loss_fn)
        optim = training.optim_step(self.adam)
        try:
            wait(backward, "forward-backward", self.retry, queue)
            metrics = self._step_local_parts()
            response = wait_with_retries(
                optim, lambda: training.optim_step(self.adam), "optimizer step", self.retry, queue
            )
        except Exception as error:
            # After a failed forward-backward the SDK refuses this client's requests (the
            # loss function's own error included); after a lost optimizer step its gradients
            # would add to the next batch's.
            self._broken = (
                f"Tinker training step {self.steps + 1} failed ({type(error).__name__}: "
                f"{error}); this training client cannot go on: reload the last checkpoint"
            )
            if isinstance(error, TinkerFatalError):
                raise  # the loss function's own error: a reload would replay it
            problem = None if is_transient(error) else explained(error, "the training step")
            if isinstance(problem, TinkerFatalError):
                raise problem from error  # a rejected key or billing: reloading cannot help
            raise TinkerStepError(self._broken) from error
        self.steps += 1
        self._sampler = None  # the next sample() takes a client on the new weights
        metrics.update(recorded)
        for key, value in (response.metrics or {}).items():
            metrics[f"tinker/{key}"] = float(value)
        return metrics

    def _loss_fn(
        self, batch: TrainBatch, objective: Objective, recorded: dict[str, float]
    ) -> Callable[[list[types.Datum], list[Tensor]], tuple[Tensor, dict[str, float]]]:
        """The custom loss the SDK calls with each datum's log-probs (with gradient)."""
        prompt_lengths = [len(ids) for ids in batch.prompt_ids]
        completion_lengths = [len(ids) for ids in batch.completion_ids]
        completion_ids = padded_completions(batch.completion_ids)
        log_reward = batch.log_reward.detach().float()
        keys = list(batch.prompt_keys)
        failed, on_policy = batch.failed, batch.on_policy

        def loss_fn(
            data: list[types.Datum], logprobs: list[Tensor]
        ) -> tuple[Tensor, dict[str, float]]:
            try:
                return objective_on(logprobs)
            except Exception as error:  # runs on the SDK's loss thread; surfaces at result()
                raise TinkerFatalError(
                    f"the custom loss function raised {type(error).__name__}: {error}; this "
                    "is a fault of the loss, not of the service (the SDK has poisoned the "
                    "training client)"
                ) from error

        def objective_on(logprobs: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
            log_pf, mask = completion_log_probs(logprobs, prompt_lengths, completion_lengths)
            log_flow = None
            if self.flow is not None:
                log_flow = self.flow(FlowInputs(keys, completion_ids, mask))
            learned = self.log_z(keys) if self.log_z is not None else None
            scores = TrajectoryScores(log_pf, mask, log_flow, learned)
            loss, log_z = objective_loss(
                objective,
                scores,
                log_reward,
                keys,
                failed=failed,
                on_policy=on_policy,
                failure_weight=self.failure_weight,
            )
            log_pf_total = torch.where(mask, log_pf, 0.0).sum(-1)
            recorded.update(
                loss=float(loss.detach()),
                log_z=float(log_z.detach().mean()),
                log_pf_mean=float(log_pf_total.detach().mean()),
                tokens=float(mask.sum()),
            )
            return loss, dict(recorded)

        return loss_fn

    def _step_local_parts(self) -> dict[str, float]:
        """Clip and step log Z and the flow network, whose grads the custom loss filled."""
        if self.optimizer is None:
            return {}
        metrics = {
            f"grad_norm_{group['name']}": float(
                torch.nn.utils.clip_grad_norm_(group["params"], self.max_grad_norm)
            )
            for group in self.optimizer.param_groups
        }
        self.optimizer.step()
        return metrics

    # ---- scoring: eval and thinking: latent -------------------------------------------

    @torch.no_grad()
    def sequence_log_probs(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> Tensor:
        """[B] sum of each completion's token log-probs at temperature 1, scored by the very
        sampler `sample` draws from, so eval's importance weights use the sampling policy."""
        rows = self._completion_log_probs(
            self._sampling_client(), prompt_ids, completion_ids, "sequence log-probs"
        )
        return torch.stack([row.sum() for row in rows])

    @torch.no_grad()
    def reference_think_log_prob(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> Tensor:
        if self._reference is None:
            self._reference = request(
                lambda: self.connection.service.create_sampling_client(
                    base_model=self.policy.model_name
                ),
                "reference sampling client",
                self.retry,
            )
        rows = self._completion_log_probs(
            self._reference, prompt_ids, completion_ids, "reference log-probs"
        )
        lengths = [len(row) for row in rows]
        ref_log_probs = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        span = think_span_mask(
            padded_completions(completion_ids), mask, think_end_id=self.chat.think_end_id
        )
        return think_log_prob(ref_log_probs, span)

    def _completion_log_probs(
        self,
        client: Any,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        what: str,
    ) -> list[Tensor]:
        """Per completion, [C] log p(token | prompt, earlier tokens) from a sampling client.

        Only the completion is scored (prompt_logprobs_last_n), so the service can serve the
        shared prompt from its prefix cache; all requests go out before any is awaited.
        """
        sequences = [
            types.ModelInput.from_ints([*prompt, *completion])
            for prompt, completion in zip(prompt_ids, completion_ids, strict=True)
        ]

        watch = self._sampler_queue if client is self._sampler else None

        def attempt() -> list[Any]:
            futures = [
                client.compute_logprobs(sequence, prompt_logprobs_last_n=len(completion) or None)
                for sequence, completion in zip(sequences, completion_ids, strict=True)
            ]
            return [wait(future, what, self.retry, watch) for future in futures]

        scored = with_retries(attempt, what, self.retry)
        return [
            scored_completion(values, len(prompt), len(completion))
            for values, prompt, completion in zip(scored, prompt_ids, completion_ids, strict=True)
        ]

    # ---- checkpoints --------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        self._check_usable()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._saved is None or self._saved["step"] != self.steps:
            self._saved = self._save_on_service()
        _write_atomically(directory / CHECKPOINT_FILE, json.dumps(self._saved, indent=2).encode())
        state = {
            "log_z": None if self.log_z is None else self.log_z.state_dict(),
            "flow": None if self.flow is None else self.flow.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "sampling_rng": self.generator.get_state(),
            "steps": self.steps,
        }
        staging = directory / f".{STATE_FILE}.tmp"
        torch.save(state, staging)
        os.replace(staging, directory / STATE_FILE)

    def _save_on_service(self) -> dict[str, Any]:
        """Training state (weights + Adam) and sampler weights, both submitted before waiting.

        A retry takes a fresh name: the first attempt may have been saved on the service
        with only its answer lost, and the service refuses a name twice.
        """
        training = self._training_client()
        base = f"step-{self.steps:06d}"
        state_names = (f"{base}-retry{n}" if n else base for n in itertools.count())
        sampler_names = (f"{base}-retry{n}" if n else base for n in itertools.count())

        def save_state() -> Any:
            return training.save_state(next(state_names))

        def save_sampler() -> Any:
            return training.save_weights_for_sampler(next(sampler_names))

        queue = self._training_queue
        state, sampler = save_state(), save_sampler()
        state_path = wait_with_retries(state, save_state, "checkpoint save", self.retry, queue).path
        sampler_path = wait_with_retries(
            sampler, save_sampler, "sampler weights save", self.retry, queue
        ).path
        return {
            "base_model": self.policy.model_name,
            "lora_rank": self.policy.lora_r,
            "step": self.steps,
            "state_path": state_path,
            "sampler_path": sampler_path,
        }

    def release_checkpoint(self, directory: Path) -> None:
        """Local pruning is deleting `directory`: delete the remote copies it names.

        policy.remote_checkpoints=keep_all keeps them. A failed delete is logged, not
        raised: a leftover remote copy costs storage, not the run.
        """
        if self.policy.remote_checkpoints == "keep_all":
            return
        record = Path(directory) / CHECKPOINT_FILE
        if not record.is_file():
            return
        saved = json.loads(record.read_text())
        current = self._saved or {}
        for key in ("state_path", "sampler_path"):
            path = saved.get(key)
            if not path or path == current.get(key):
                continue
            try:
                request(
                    lambda path=path: self.connection.rest.delete_checkpoint_from_tinker_path(path),
                    "checkpoint delete",
                    self.retry,
                )
            except Exception as error:
                log.warning("could not delete the remote checkpoint %s: %s", path, error)

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        saved = json.loads((directory / CHECKPOINT_FILE).read_text())
        mine = {"base_model": self.policy.model_name, "lora_rank": self.policy.lora_r}
        theirs = {key: saved[key] for key in mine}
        if theirs != mine:
            raise ValueError(
                f"checkpoint {directory} was trained as {theirs}, this policy is {mine}"
            )
        state = torch.load(directory / STATE_FILE, weights_only=True)
        _load_or_check_absent(self.log_z, state["log_z"], "log Z table")
        _load_or_check_absent(self.flow, state["flow"], "flow network")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["sampling_rng"])
        # The service clients come lazily: sampling (synthstats eval) needs only the
        # checkpoint's sampler weights; the first training step restores the training state.
        # A failed client is dropped here, which is how the loop's reload recovers.
        self._training = None
        self._training_queue = None
        self.steps = state["steps"]
        self._saved = saved
        self._sampler = None
        self._sampler_queue = None
        self._broken = None

    # ---- service clients ----------------------------------------------------------------

    def _training_client(self) -> Any:
        if self._training is None and self._saved is not None:
            # Saved but no training client: a loaded checkpoint, whose state it resumes.
            path = self._saved["state_path"]
            self._training = request(
                lambda: self.connection.service.create_training_client_from_state_with_optimizer(
                    path
                ),
                "training client from checkpoint",
                self.retry,
            )
        if self._training is None:
            self._training = request(
                lambda: self.connection.service.create_lora_training_client(
                    base_model=self.policy.model_name,
                    rank=self.policy.lora_r,
                    seed=self.seed,
                    **self.lora_blocks,
                ),
                "training client creation",
                self.retry,
            )
        if self._training_queue is None:
            self._training_queue = watch_queue(self._training)
        return self._training

    def _sampling_client(self) -> Any:
        """A sampler on the current weights: saved ones when this step has them, or fresh."""
        if self._sampler is None:
            if self._saved is not None and self._saved["step"] == self.steps:
                path = self._saved["sampler_path"]
                self._sampler = request(
                    lambda: self.connection.service.create_sampling_client(model_path=path),
                    "sampler from checkpoint",
                    self.retry,
                )
            else:
                training = self._training_client()
                self._sampler = request(
                    training.save_weights_and_get_sampling_client,
                    "sampler refresh",
                    self.retry,
                    self._training_queue,
                )
            self._sampler_queue = watch_queue(self._sampler)
        return self._sampler

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise TinkerBackendError(self._broken)


def lora_blocks(target_modules: Sequence[str]) -> dict[str, bool]:
    """Tinker's train_attn / train_mlp / train_unembed switches for the local target names."""
    known = set().union(*_LORA_BLOCKS.values())
    unknown = sorted(set(target_modules) - known)
    if unknown or not target_modules:
        raise ConfigError(
            f"policy.lora_target_modules={list(target_modules)}: Tinker trains whole blocks; "
            f"use names from {sorted(known)}"
        )
    return {block: bool(names & set(target_modules)) for block, names in _LORA_BLOCKS.items()}


def _write_atomically(path: Path, payload: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(payload)
    os.replace(staging, path)


def _load_or_check_absent(module: torch.nn.Module | None, state: dict | None, what: str) -> None:
    if (module is None) != (state is None):
        raise ValueError(
            f"checkpoint and backend disagree on the {what}: built from a different objective"
        )
    if module is not None:
        module.load_state_dict(state)
