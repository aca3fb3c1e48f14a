"""The local policy: transformers + PEFT LoRA on this machine's GPU (or CPU).

The base model is frozen (bfloat16 on GPU, float32 on CPU unless policy.dtype says
otherwise); the LoRA weights, log Z table, flow estimator and optimizer state are float32.
One torch Adam optimizer (betas and eps from policy.adam_*, as the Tinker backend sends
them) has a group per trainable part, each with its own learning rate
(LoRA: train.learning_rate, log Z: objective.log_z_lr, flow: train.flow_learning_rate);
a part the config does not use (no flow estimator for TB, no table for VarGrad) gets no
group, never an empty one. Gradients are clipped per group, so the large early log Z
residual does not shrink the policy's step.

Bare or under `accelerate launch` (DDP, DeepSpeed ZeRO-2/3) alike: everything distributed
goes through `synthstats.backends.distributed.Distributed`. Each rank samples with its own
generator (seed + rank). Under DeepSpeed, DeepSpeed clips all groups together
(runner.train.max_grad_norm) inside its step, and the optimizer state stays sharded.

Checkpoint layout written by `save` (the main rank writes; under DeepSpeed every rank
writes its own optimizer shard):
    adapter/           PEFT save_pretrained (loads with PeftModel.from_pretrained)
    policy_state.pt    log Z table, flow estimator, optimizer (not under DeepSpeed),
                       sampling RNG of every rank
    deepspeed/         DeepSpeed only: sharded optimizer state and trainable weights
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthstats.backends.base import Rollout, TrainBatch
from synthstats.backends.distributed import Distributed
from synthstats.backends.policy_module import (
    PolicyWithFlows,
    TrajectoryScores,
    objective_loss,
    pack_trajectories,
)
from synthstats.backends.sampling import sample_completions
from synthstats.config import ConfigError, ObjectiveConfig, PolicyConfig, TrainConfig
from synthstats.objectives import (
    HiddenStateFlowHead,
    LogZTable,
    Objective,
    PrefixFlowNet,
    build_objective,
    think_log_prob,
    think_span_mask,
)

ADAPTER_DIR = "adapter"
STATE_FILE = "policy_state.pt"
DEEPSPEED_DIR = "deepspeed"
THINK_END = "</think>"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on GPU, float32 on CPU (CPU bfloat16 matmuls are slow and lossy)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


class LocalBackend:
    """A LoRA policy with its log Z table and flow estimator, trained in this process."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        policy: PolicyConfig,
        train: TrainConfig,
        objective: ObjectiveConfig,
        prompt_keys: Sequence[str],
        seed: int = 0,
        device: torch.device | None = None,
        distributed: Distributed | None = None,
        train_base: bool = False,
    ) -> None:
        """`train_base` trains every weight of the model too, not only LoRA (the LM-path
        exact check: a tiny random model's LoRA alone cannot move its logits far enough)."""
        self.train_base = train_base
        self.distributed = distributed or Distributed.from_environment()
        self.device = device or self.distributed.device
        self.policy = policy
        self.max_grad_norm = train.max_grad_norm
        self.failure_weight = objective.failure_weight
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.vocab_size = len(self.tokenizer)
        base = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=base_dtype(policy.dtype, self.device)
        )
        if policy.gradient_checkpointing:
            base.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        # Seeded initialisation: every rank, and a resumed run, builds identical weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model, log_z, flow = _trainable_parts(base, policy, objective, prompt_keys)
        if train_base:
            for param in base.parameters():
                param.requires_grad_(True)
        self.module = PolicyWithFlows(
            peft_model, vocab_size=self.vocab_size, log_z=log_z, flow=flow
        ).to(self.device)
        groups = [
            {"name": "lora", "params": _trainable(peft_model), "lr": train.learning_rate},
        ]
        if log_z is not None:
            groups.append({"name": "log_z", "params": [log_z.values], "lr": objective.log_z_lr})
        if flow is not None:
            groups.append(
                {"name": "flow", "params": list(flow.parameters()), "lr": train.flow_learning_rate}
            )
        # self.module stays the bare module (sampling, saving); self.wrapped is what trains
        # (itself, DDP or a DeepSpeed engine), so gradients are averaged over ranks.
        self.wrapped, self.optimizer = self.distributed.setup(
            self.module,
            torch.optim.Adam(
                groups, betas=(policy.adam_beta1, policy.adam_beta2), eps=policy.adam_eps
            ),
            micro_batch_size=self.distributed.share(train.batch_size),
            max_grad_norm=train.max_grad_norm,
        )
        # Each rank draws its own samples; rank 0 of any launch draws what a bare run draws.
        self.generator = torch.Generator(self.device).manual_seed(seed + self.distributed.rank)
        self.stop_ids = _stop_ids(self.tokenizer, base.generation_config.eos_token_id)
        self.think_end_id = self.tokenizer.convert_tokens_to_ids(THINK_END)

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=self.policy.thinking != "off",
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenize_completion(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [*ids, self.tokenizer.eos_token_id]

    def sample(
        self, prompt_key: str, prompt_ids: Sequence[int], temperatures: Sequence[float]
    ) -> list[Rollout]:
        self.module.eval()
        with self.distributed.generation_weights(self.wrapped):
            drawn = sample_completions(
                self.module.lm,
                prompt_ids,
                torch.tensor(list(temperatures), dtype=torch.float32, device=self.device),
                max_new_tokens=self.policy.max_new_tokens,
                stop_ids=self.stop_ids,
                vocab_size=self.vocab_size,
                generator=self.generator,
            )
        return [
            Rollout(
                prompt_key=prompt_key,
                prompt_ids=tuple(prompt_ids),
                completion_ids=tuple(sampled.completion_ids),
                text=self.decode_completion(sampled.completion_ids),
                truncated=sampled.truncated,
                temperature=float(temperature),
            )
            for sampled, temperature in zip(drawn, temperatures, strict=True)
        ]

    def decode_completion(self, completion_ids: Sequence[int]) -> str:
        """The completion's text, without its final stop token."""
        ids = list(completion_ids)
        if ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids)

    def train_step(self, batch: TrainBatch, objective: Objective) -> dict[str, float]:
        if objective.needs_flow and self.module.flow is None:
            raise ValueError(
                "this objective needs a flow estimator, but the backend was built for "
                "objective.loss=tb; build it from the same objective config"
            )
        scores = self.loss_scores(batch.prompt_keys, batch.prompt_ids, batch.completion_ids)
        log_reward = batch.log_reward.to(self.device, torch.float32)
        loss, log_z = objective_loss(
            objective,
            scores,
            log_reward,
            batch.prompt_keys,
            failed=batch.failed,
            on_policy=batch.on_policy,
            failure_weight=self.failure_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.distributed.backward(loss)
        metrics = self.distributed.clip_gradients(self.optimizer, self.max_grad_norm)
        self.optimizer.step()
        log_pf_total = torch.where(scores.mask, scores.log_pf, 0.0).sum(-1)
        metrics.update(
            loss=float(loss.detach()),
            log_z=float(log_z.detach().mean()),
            log_pf_mean=float(log_pf_total.detach().mean()),
            tokens=float(scores.mask.sum()),
        )
        return metrics

    def supervised_step(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> float:
        """One step of plain likelihood on these completions (the supervised phase); returns
        the mean per-token negative log-likelihood before the step."""
        keys = [""] * len(prompt_ids)
        with _without_log_z_and_flow(self.module):
            scores = self.loss_scores(keys, prompt_ids, completion_ids)
        loss = -torch.where(scores.mask, scores.log_pf, 0.0).sum() / scores.mask.sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.distributed.backward(loss)
        self.distributed.clip_gradients(self.optimizer, self.max_grad_norm)
        self.optimizer.step()
        return float(loss.detach())

    def loss_scores(
        self,
        prompt_keys: Sequence[str],
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
    ) -> TrajectoryScores:
        """log P_F (with gradient), log F and log Z exactly as the loss reads them.

        Train mode, but with every dropout module off (LoRA's lora_dropout included): the
        loss must fit the sampler's own log-probabilities, not their average over dropout
        masks, or the fixed point is not the sampler's distribution.
        """
        self.wrapped.train()
        for module in self.module.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        inputs = pack_trajectories(
            prompt_keys,
            prompt_ids,
            completion_ids,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
        )
        return self.wrapped(inputs)

    def _pack_for_scoring(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ):
        """Trajectories scored without a prompt key (no log Z or flow is read)."""
        return pack_trajectories(
            [""] * len(prompt_ids),
            prompt_ids,
            completion_ids,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
        )

    @torch.no_grad()
    def sequence_log_probs(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> Tensor:
        """Sum of each completion's token log P_F at temperature 1 under the policy: [B]."""
        self.module.eval()
        inputs = self._pack_for_scoring(prompt_ids, completion_ids)
        states = self.module._final_states(inputs)
        log_pf = self.module._log_pf(states, inputs)
        return torch.where(inputs.mask, log_pf, 0.0).sum(-1).float().cpu()

    @torch.no_grad()
    def reference_think_log_prob(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> Tensor:
        self.module.eval()
        inputs = self._pack_for_scoring(prompt_ids, completion_ids)
        scores = self.module(inputs, reference=True)
        span = think_span_mask(inputs.completion_ids, inputs.mask, think_end_id=self.think_end_id)
        return think_log_prob(scores.log_pf, span).cpu()

    def save(self, directory: Path) -> None:
        """Collective with several processes: every rank calls it, the main rank writes."""
        directory = Path(directory)
        if self.distributed.is_main:
            directory.mkdir(parents=True, exist_ok=True)
        # Under ZeRO-3 each rank holds a slice: gather only the trainable weights.
        lora = self.module.lm.named_parameters()
        adapter = self.distributed.full_state((n, p) for n, p in lora if p.requires_grad)
        log_z = self._full_state_or_none(self.module.log_z)
        flow = self._full_state_or_none(self.module.flow)
        sampling_rngs = self.distributed.gather_to_main(self.generator.get_state())
        sharded = self.distributed.zero_stage is not None
        if sharded:
            self.distributed.save_sharded(self.wrapped, directory / DEEPSPEED_DIR)
        if self.distributed.is_main:
            self.module.lm.save_pretrained(directory / ADAPTER_DIR, state_dict=adapter)
            state = {"log_z": log_z, "flow": flow, "sampling_rng": sampling_rngs}
            if self.train_base:
                state["base"] = {k: v.detach().cpu() for k, v in adapter.items()}
            if not sharded:
                state["optimizer"] = self.optimizer.state_dict()
            torch.save(state, directory / STATE_FILE)
        self.distributed.barrier()

    def load(self, directory: Path) -> None:
        """Collective with several processes; needs as many processes as wrote the checkpoint."""
        directory = Path(directory)
        state = torch.load(directory / STATE_FILE, map_location=self.device, weights_only=True)
        sampling_rngs = state["sampling_rng"]
        if len(sampling_rngs) != self.distributed.world_size:
            raise ConfigError(
                f"{directory} was written by {len(sampling_rngs)} process(es); resume it with "
                f"the same number (this launch has {self.distributed.world_size})"
            )
        if self.distributed.zero_stage is not None:
            # The shards restore the trainable weights with their optimizer state.
            self.distributed.load_sharded(self.wrapped, directory / DEEPSPEED_DIR)
        else:
            self._load_unsharded(directory, state)
        self.generator.set_state(sampling_rngs[self.distributed.rank].cpu())

    def _full_state_or_none(self, module: nn.Module | None) -> dict[str, Tensor] | None:
        if module is None:
            return None
        return self.distributed.full_state(module.state_dict(keep_vars=True).items())

    def _load_unsharded(self, directory: Path, state: dict) -> None:
        if "optimizer" not in state:
            raise ConfigError(
                f"{directory} was written under DeepSpeed (sharded optimizer state); resume it "
                "under the accelerate config that wrote it"
            )
        if self.train_base:
            self.module.lm.load_state_dict(state["base"], strict=False)
        weights = load_peft_weights(str(directory / ADAPTER_DIR), device=str(self.device))
        result = set_peft_model_state_dict(self.module.lm, weights)
        missing = [key for key in result.missing_keys if "lora_" in key]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"adapter in {directory} does not match this policy's LoRA config: "
                f"missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
        _load_or_check_absent(self.module.log_z, state["log_z"], "log Z table")
        _load_or_check_absent(self.module.flow, state["flow"], "flow estimator")
        self.optimizer.load_state_dict(state["optimizer"])


def _trainable_parts(
    base: nn.Module,
    policy: PolicyConfig,
    objective: ObjectiveConfig,
    prompt_keys: Sequence[str],
) -> tuple[nn.Module, LogZTable | None, nn.Module | None]:
    """The LoRA-wrapped model, the log Z table (learned log Z only) and the flow estimator
    (objectives that read flows only)."""
    lora = LoraConfig(
        r=policy.lora_r,
        lora_alpha=policy.lora_alpha,
        lora_dropout=policy.lora_dropout,
        target_modules=list(policy.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype (PEFT's default) keeps LoRA weights float32 on a bf16 base.
    peft_model = get_peft_model(base, lora, autocast_adapter_dtype=True)
    log_z = LogZTable(prompt_keys) if objective.log_z == "learned" else None
    flow = None
    if build_objective(objective).needs_flow:
        if objective.flow_estimator == "hidden_head":
            flow = HiddenStateFlowHead(base.config.hidden_size)
        else:
            flow = PrefixFlowNet(prompt_keys, vocab_size=base.config.vocab_size)
    return peft_model, log_z, flow


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    params = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise ValueError("the LoRA config matched no module: check policy.lora_target_modules")
    return params


def _stop_ids(tokenizer, eos: int | list[int] | None) -> list[int]:
    """The tokenizer's end-of-turn token plus the model's generation_config eos ids."""
    extra = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return sorted({tokenizer.eos_token_id, *extra})


@contextmanager
def _without_log_z_and_flow(module: PolicyWithFlows) -> Iterator[None]:
    """Score without reading log Z or flows (the supervised phase needs neither)."""
    log_z, flow = module.log_z, module.flow
    module.log_z, module.flow = None, None
    try:
        yield
    finally:
        module.log_z, module.flow = log_z, flow


def _load_or_check_absent(module: nn.Module | None, state: dict | None, what: str) -> None:
    if (module is None) != (state is None):
        raise ValueError(
            f"checkpoint and backend disagree on the {what}: built from a different objective"
        )
    if module is not None:
        module.load_state_dict(state)
