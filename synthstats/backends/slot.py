"""policy=slot: a tiny Qwen3 from scratch over a slot vocabulary, with p_theta exact.

The vocabulary is PAD, BOS, EOS, one token per choice of each slot of an env's program
space (synthstats/envs/spaces), and one per edit of the last, failure slot: the program as
written, or one of the failure edits the judge's gate refuses
(synthstats/envs/spaces/failures.py), so the policy can fail and the failure treatment is
measured exactly too. The prompt is [BOS]; a completion is one choice token per slot, in
slot order, then the edit, then EOS. At step t only slot t's tokens are valid (EOS after
the edit), and sampling and P_F both renormalise over the valid tokens, so no probability
leaves the programs and their failure edits, and p_theta of every completion is a product
of masked softmaxes, computable for all at once (`exact_log_probs`). A rollout's `text` is the
rendered program in a ```python fence, so the judge scores it like any completion.

Everything else is the local backend's recipe: the shared objective, a LogZTable keyed by
prompt, a flow estimator (hidden-state head or prefix net, from the objective config) inside
one module, one Adam with a group per part and per-group gradient clipping. The whole
transformer trains (no LoRA); it is small enough that a CPU beats GPU kernel launches.

    backend = build_backend(resolve(["policy=slot", "env=dugongs"]))

Checkpoint layout written by `save`: slot_policy.pt (module, optimizer, sampling RNG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import Qwen3Config, Qwen3ForCausalLM

from synthstats.backends.base import Rollout, TrainBatch
from synthstats.backends.policy_module import (
    ScoringInputs,
    TrajectoryScores,
    objective_loss,
    pack_trajectories,
)
from synthstats.config import ObjectiveConfig, PolicyConfig, TrainConfig
from synthstats.envs.spaces import ProgramSpace
from synthstats.envs.spaces.failures import FAILURE_EDITS, failure_completion
from synthstats.envs.spaces.grammar import Path as ProgramPath
from synthstats.objectives import (
    FlowInputs,
    HiddenStateFlowHead,
    LogZTable,
    Objective,
    PrefixFlowNet,
    build_objective,
)

STATE_FILE = "slot_policy.pt"
PAD, BOS, EOS = 0, 1, 2
# The failure slot's choices: index 0 keeps the program valid, the others are gate failures.
EDITS = ("as written", *FAILURE_EDITS)
# About 76k parameters: ample for a distribution over ~50 programs, milliseconds per step.
ARCHITECTURE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


class SlotVocabulary:
    """Token ids of a space's choices and failure edits, which tokens are valid at each
    step, and the completion text of every path (a program's choices, then its edit)."""

    def __init__(self, space: ProgramSpace) -> None:
        self.space = space
        self.sizes = [len(slot.choices) for slot in space.slots] + [len(EDITS)]
        self.offsets: list[int] = []
        next_id = EOS + 1
        for size in self.sizes:
            self.offsets.append(next_id)
            next_id += size
        self.size = next_id
        # valid[t, v]: token v may follow t choice tokens; the last row allows only EOS.
        self.valid = torch.zeros(len(self.sizes) + 1, self.size, dtype=torch.bool)
        for step, (offset, size) in enumerate(zip(self.offsets, self.sizes, strict=True)):
            self.valid[step, offset : offset + size] = True
        self.valid[-1, EOS] = True

    @property
    def completion_length(self) -> int:
        return len(self.sizes) + 1

    def paths(self) -> list[ProgramPath]:
        """Every completion's path: each program of the space as written, then its edits."""
        return [(*path, edit) for path in self.space.paths() for edit in range(len(EDITS))]

    def text_of(self, path: ProgramPath) -> str:
        """The completion text of a path: the program's, or its failure edit's."""
        return self._text_by_path[tuple(path)]

    @cached_property
    def _text_by_path(self) -> dict[ProgramPath, str]:
        """Rendered once: every exact evaluation names all completions."""
        texts = {}
        for *program, edit in self.paths():
            path = tuple(program)
            texts[(*path, edit)] = (
                self.space.completion(path)
                if edit == 0
                else failure_completion(self.space, path, EDITS[edit])
            )
        return texts

    def path_of_text(self, text: str) -> ProgramPath:
        """The path whose completion is exactly this text; ValueError for any other."""
        try:
            return self._path_by_text[text]
        except KeyError:
            raise ValueError(
                f"text is not a program of the {self.space.env_name} space or a failure edit of one"
            ) from None

    @cached_property
    def _path_by_text(self) -> dict[str, ProgramPath]:
        return {text: path for path, text in self._text_by_path.items()}

    def ids_of(self, path: ProgramPath) -> list[int]:
        """The completion ids of a path: its choice tokens, its edit, then EOS."""
        return [offset + index for offset, index in zip(self.offsets, path, strict=True)] + [EOS]

    def path_of(self, completion_ids: Sequence[int]) -> ProgramPath:
        """The path a completion spells; ValueError if a token is invalid where it stands."""
        ids = list(completion_ids)
        if len(ids) != self.completion_length or not all(
            0 <= token < self.size and bool(self.valid[step, token])
            for step, token in enumerate(ids)
        ):
            raise ValueError(f"{ids} is not a completion of the {self.space.env_name} space")
        return tuple(token - offset for token, offset in zip(ids[:-1], self.offsets, strict=True))


class SlotPolicyModule(nn.Module):
    """The causal LM, the optional log Z table and flow estimator; forward gives what the
    objective needs, with log P_F renormalised over each step's valid tokens."""

    def __init__(
        self,
        lm: Qwen3ForCausalLM,
        valid: Tensor,
        *,
        log_z: LogZTable | None,
        flow: nn.Module | None,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.register_buffer("valid", valid, persistent=False)
        self.log_z = log_z
        self.flow = flow

    def masked_logits(self, logits: Tensor, steps: Tensor) -> Tensor:
        """Logits with the tokens invalid at each step set to -inf (steps: any shape)."""
        allowed = self.valid[steps.clamp(max=self.valid.shape[0] - 1)]
        return logits.float().masked_fill(~allowed, float("-inf"))

    def forward(self, inputs: ScoringInputs) -> TrajectoryScores:
        hidden = self.lm.model(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False
        ).last_hidden_state
        index = inputs.state_positions[..., None].expand(-1, -1, hidden.shape[-1])
        states = hidden.gather(1, index)  # [B, T+1, H]
        steps = torch.arange(inputs.completion_ids.shape[1], device=states.device)
        logits = self.masked_logits(self.lm.lm_head(states[:, :-1]), steps[None, :])
        chosen = logits.gather(-1, inputs.completion_ids[..., None]).squeeze(-1)
        log_pf = torch.where(inputs.mask, chosen - logits.logsumexp(-1), 0.0)
        log_flow = None
        if self.flow is not None:
            hidden_states = states if self.flow.needs_hidden_states else None
            log_flow = self.flow(
                FlowInputs(inputs.prompt_keys, inputs.completion_ids, inputs.mask, hidden_states)
            )
        log_z = self.log_z(inputs.prompt_keys) if self.log_z is not None else None
        return TrajectoryScores(log_pf, inputs.mask, log_flow, log_z)


class SlotBackend:
    """The PolicyBackend of an enumerable program space."""

    def __init__(
        self,
        space: ProgramSpace,
        *,
        policy: PolicyConfig,
        train: TrainConfig,
        objective: ObjectiveConfig,
        prompt_keys: Sequence[str],
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        if policy.thinking != "off":
            raise ValueError("policy=slot writes no think span: use policy.thinking=off")
        self.device = device or torch.device("cpu")
        self.space = space
        self.vocabulary = SlotVocabulary(space)
        self.prompt_keys = list(prompt_keys)
        self.max_grad_norm = train.max_grad_norm
        self.failure_weight = objective.failure_weight
        # Seeded initialisation: a resumed run builds identical weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lm = Qwen3ForCausalLM(_qwen3_config(self.vocabulary.size))
            log_z = LogZTable(prompt_keys) if objective.log_z == "learned" else None
            flow = _flow_estimator(objective, prompt_keys, self.vocabulary.size)
        self.module = SlotPolicyModule(lm, self.vocabulary.valid, log_z=log_z, flow=flow).to(
            self.device
        )
        groups = [{"name": "policy", "params": list(lm.parameters()), "lr": train.learning_rate}]
        if log_z is not None:
            groups.append({"name": "log_z", "params": [log_z.values], "lr": objective.log_z_lr})
        if flow is not None:
            groups.append(
                {"name": "flow", "params": list(flow.parameters()), "lr": train.flow_learning_rate}
            )
        self.optimizer = torch.optim.Adam(groups)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """[BOS]: the slot policy reads no text; its space already fixes the env."""
        return [BOS]

    def tokenize_completion(self, text: str) -> list[int]:
        """The ids of a program of the space or a failure edit of one; ValueError for any
        other text."""
        return self.vocabulary.ids_of(self.vocabulary.path_of_text(text))

    @torch.no_grad()
    def sample(
        self, prompt_key: str, prompt_ids: Sequence[int], temperatures: Sequence[float]
    ) -> list[Rollout]:
        """Ancestral sampling, each step from softmax(masked logits / T)."""
        temperature = torch.tensor(list(temperatures), dtype=torch.float32, device=self.device)
        if bool((temperature <= 0).any()):
            raise ValueError(f"sampling temperatures must be > 0, got {list(temperatures)}")
        self.module.eval()
        ids = torch.tensor([list(prompt_ids)], device=self.device).repeat(len(temperatures), 1)
        for step in range(self.vocabulary.completion_length):
            logits = self.module.lm(input_ids=ids, use_cache=False).logits[:, -1]
            logits = self.module.masked_logits(logits, torch.tensor(step, device=self.device))
            probs = torch.softmax(logits / temperature[:, None], dim=-1)
            drawn = torch.multinomial(probs, 1, generator=self.generator)
            ids = torch.cat([ids, drawn], dim=1)
        completions = ids[:, len(prompt_ids) :].tolist()
        return [
            Rollout(
                prompt_key=prompt_key,
                prompt_ids=tuple(prompt_ids),
                completion_ids=tuple(completion),
                text=self.vocabulary.text_of(self.vocabulary.path_of(completion)),
                truncated=False,
                temperature=float(value),
            )
            for completion, value in zip(completions, temperatures, strict=True)
        ]

    def train_step(self, batch: TrainBatch, objective: Objective) -> dict[str, float]:
        if objective.needs_flow and self.module.flow is None:
            raise ValueError(
                "this objective needs a flow estimator, but the backend was built for "
                "objective.loss=tb; build it from the same objective config"
            )
        for completion in batch.completion_ids:
            self.vocabulary.path_of(completion)  # raises on ids outside the space
        self.module.train()
        scores = self.module(self._pack(batch.prompt_keys, batch.prompt_ids, batch.completion_ids))
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
        loss.backward()
        metrics = {
            f"grad_norm_{group['name']}": float(
                torch.nn.utils.clip_grad_norm_(group["params"], self.max_grad_norm)
            )
            for group in self.optimizer.param_groups
        }
        self.optimizer.step()
        metrics.update(
            loss=float(loss.detach()),
            log_z=float(log_z.detach().mean()),
            log_pf_mean=float(scores.log_pf.detach().sum(-1).mean()),
            tokens=float(scores.mask.sum()),
        )
        return metrics

    def reference_think_log_prob(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> Tensor:
        """Zeros: a slot completion has no think span."""
        return torch.zeros(len(completion_ids))

    @torch.no_grad()
    def exact_log_probs(self, prompt_key: str | None = None) -> dict[str, float]:
        """log p_theta of every completion the policy can write, programs of the space and
        their failure edits (keyed by completion text), from one forward pass over the
        enumeration; the values' exponentials sum to 1."""
        key = prompt_key or self.prompt_keys[0]
        paths = self.vocabulary.paths()
        completions = [self.vocabulary.ids_of(path) for path in paths]
        self.module.eval()
        scores = self.module(self._pack([key] * len(paths), [[BOS]] * len(paths), completions))
        totals = scores.log_pf.sum(-1).double().tolist()
        return {
            self.vocabulary.text_of(path): total for path, total in zip(paths, totals, strict=True)
        }

    @torch.no_grad()
    def learned_log_z(self, prompt_key: str | None = None) -> float:
        """The log Z table's entry for a prompt (the first prompt key by default)."""
        if self.module.log_z is None:
            raise ValueError("objective.log_z=vargrad keeps no learned log Z")
        return float(self.module.log_z([prompt_key or self.prompt_keys[0]])[0])

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampling_rng": self.generator.get_state(),
        }
        torch.save(state, directory / STATE_FILE)

    def load(self, directory: Path) -> None:
        state = torch.load(
            Path(directory) / STATE_FILE, map_location=self.device, weights_only=True
        )
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["sampling_rng"].cpu())

    def _pack(
        self,
        prompt_keys: Sequence[str],
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
    ) -> ScoringInputs:
        return pack_trajectories(
            prompt_keys, prompt_ids, completion_ids, pad_id=PAD, device=self.device
        )


def _qwen3_config(vocab_size: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        **ARCHITECTURE,
    )


def _flow_estimator(
    objective: ObjectiveConfig, prompt_keys: Sequence[str], vocab_size: int
) -> nn.Module | None:
    """The flow estimator the objective config names, or None when the loss reads no flows."""
    if not build_objective(objective).needs_flow:
        return None
    if objective.flow_estimator == "hidden_head":
        return HiddenStateFlowHead(ARCHITECTURE["hidden_size"])
    return PrefixFlowNet(prompt_keys, vocab_size=vocab_size)
