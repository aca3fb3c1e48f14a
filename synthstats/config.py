"""Typed run configuration: YAML groups in configs/ plus `key=value` overrides.

A run config is assembled in three layers, later layers winning: the root defaults
(configs/config.yaml) and the group files they select, a user's `--config-file`, and the
command line. The result is validated into the dataclasses below, so the rest of the code
reads attributes, never untyped dict lookups. Every problem found (unknown keys, wrong types,
ranges and relations: `problems()`) is reported in one ConfigError, and `Config.user_set`
records the keys the user gave, so recipes fill only what was left unset.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from synthstats.errors import UserFacingError

GROUPS = ("env", "policy", "objective", "judge", "runner", "logging")


class ConfigError(UserFacingError, ValueError):
    """A user-facing configuration mistake; the message says what to change.

    One error may hold several problems (`problems`), so a user fixes them all in one go.
    """

    def __init__(self, *problems: str):
        self.problems = list(problems)
        if len(problems) == 1:
            message = problems[0]
        else:
            message = f"{len(problems)} problems in the settings:\n" + "\n".join(
                f"  - {problem}" for problem in problems
            )
        super().__init__(message)


@dataclass
class EnvConfig:
    # Which dataset and prompt to train on (`synthstats envs` lists them).
    name: str = "dugongs"


@dataclass
class PolicyConfig:
    # Which policy layer implements the backend protocol.
    kind: Literal["hf", "mock", "tinker", "slot"] = "mock"
    # Hub id or local folder of the base model (hf), or the Tinker base model name.
    model_name: str = ""
    # LoRA rank and scale for the trainable adapter.
    lora_r: int = 16
    lora_alpha: int = 32
    # Must stay 0: every log P_F a loss uses is computed with dropout off (so the loss fits
    # the sampler's own probabilities), so LoRA dropout would have no effect.
    lora_dropout: float = 0.0
    # Module names that receive LoRA adapters.
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    # Longest completion sampled, in tokens; a program cut here fails as no_program.
    max_new_tokens: int = 768
    # off: Qwen3 enable_thinking=False. latent: think span kept, reward augmented with
    # the frozen reference model's log-probability of it (see README).
    thinking: Literal["off", "latent"] = "off"
    # Torch dtype of the base weights: auto picks bfloat16 on GPU, float32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Recompute activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False
    # Tinker only: tokenizer hub id or folder; empty uses the bundled Qwen3 tokenizer,
    # which only Qwen/Qwen3-* models share.
    tokenizer: str = ""
    # Tinker only, for a model outside the backend's family table (README): its prompt
    # format (qwen3_hybrid, qwen3_instruct, role_plain) and LM head size (vocab_size).
    chat_format: str = ""
    head_size: int = 0
    # Adam (decoupled weight decay 0, so AdamW) of every trained part, on both backends.
    # torch's defaults, which the local and slot targets were tuned with; Tinker's own
    # defaults (0.95, 1e-12) are not used unless set here.
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # Tinker only: the longest silence (no answer, no queue report) of one request before
    # it counts as lost; a request the service reports as queued waits up to
    # queue_timeout_s.
    request_timeout_s: float = 600.0
    queue_timeout_s: float = 21600.0
    # Tinker only: follow_local deletes a remote checkpoint when local pruning drops its
    # folder; keep_all never deletes one.
    remote_checkpoints: Literal["follow_local", "keep_all"] = "follow_local"
    # Tinker only: retries of a rate-limited or transiently failed request, and the first
    # backoff in seconds (doubled per retry, with jitter).
    max_retries: int = 5
    retry_backoff_s: float = 2.0


@dataclass
class RewardConfig:
    # Reward temperature T in log R = clamp((elpd - reference_elpd) / T, low, high).
    temperature: float = 1.0
    # Temperature reached after anneal_steps; None keeps T constant.
    final_temperature: float | None = None
    anneal_steps: int = 0
    schedule: Literal["constant", "linear", "geometric"] = "constant"
    # Clamp bounds of log R, in temperature units. The zero point is the env's reference
    # ELPD; high leaves every shipped space program below it at T=1 (the best, on
    # peregrines, is 26.7 nats above its reference), so the clamp never flattens the
    # programs a user cares about. The share cut at either bound is logged (clamped_*).
    low: float = -20.0
    high: float = 50.0
    # log R of a program that failed to score; just below `low`.
    failure_log_reward: float = -25.0


@dataclass
class ObjectiveConfig:
    # Which GFlowNet loss: sub-trajectory, trajectory or detailed balance.
    loss: Literal["subtb", "tb", "db"] = "subtb"
    # SubTB geometric weight of a sub-trajectory of length k: lamda**k.
    lamda: float = 0.9
    # Weight w of the TB anchor added to SubTB or DB (loss + w * TB): at LM lengths it is
    # what joins log Z and log R directly; 0 gives the plain loss.
    tb_anchor_weight: float = 1.0
    # Learning rate of the log Z table (far above the policy's).
    log_z_lr: float = 0.1
    # learned: a log Z table keyed by prompt. vargrad: the batch-mean estimate.
    log_z: Literal["learned", "vargrad"] = "learned"
    # Flow estimator for intermediate states: a head on the LM's hidden states, or a
    # prefix network over token ids (works on every backend, Tinker included).
    flow_estimator: Literal["hidden_head", "prefix_net"] = "prefix_net"
    # Huber threshold on residuals; None uses the plain square.
    huber_delta: float | None = None
    # Weight of the on-policy term that drives failure mass down (its gradient estimates
    # grad p(fail)); failed samples never enter the balance loss. 0 leaves p(valid) free.
    failure_weight: float = 1.0
    reward: RewardConfig = field(default_factory=RewardConfig)


# The judge settings that decide a program's score (the rest are limits and plumbing).
BUDGET_FIELDS = ("draws", "tune", "chains", "target_accept", "seed", "loo_refits", "compile")


@dataclass
class JudgeConfig:
    # Name of the configs/judge/ file this came from.
    name: str = "default"
    # NUTS budget the judge imposes on every program (programs cannot choose it).
    draws: int = 500
    tune: int = 500
    chains: int = 2
    target_accept: float = 0.9
    seed: int = 0
    # Exact refits per program for points whose Pareto k is bad (LOO without them is not
    # reliable); with more bad points, K-fold with this many folds. 0: plain PSIS-LOO.
    loo_refits: int = 5
    # How phase 2 compiles a model's functions (judge/compiler.py): whole_function, one
    # cheap C module for the sampler's function and Python for the rest; per_op,
    # PyTensor's default for every function (a module per op, -O3).
    compile: Literal["whole_function", "per_op"] = "whole_function"
    # Per-program limits inside the sandbox.
    timeout_s: float = 300.0
    memory_mb: int = 4096
    max_output_bytes: int = 1_000_000
    # Largest file a program, or the compiler it triggers, may write (bounds disk use).
    max_file_mb: int = 64
    max_processes: int = 64
    # Worker processes; 0 uses the usable cores (shared among local ranks).
    workers: int = 0
    # Persistent score cache; cache_path None means the user's cache directory.
    cache: bool = True
    cache_path: str | None = None
    # OS containment: auto uses bubblewrap when it works, else warns once.
    sandbox: Literal["auto", "bwrap", "none"] = "auto"

    def budget(self) -> dict[str, Any]:
        """The fields every program is scored under (the worker's `Budget`)."""
        return {key: getattr(self, key) for key in BUDGET_FIELDS}


@dataclass
class ExplorationConfig:
    # Sampling temperatures of tempered (exploratory) samples are drawn from this range.
    temperature_min: float = 1.0
    temperature_max: float = 1.5
    # Share of each fresh batch sampled at a tempered temperature instead of 1.
    tempered_share: float = 0.5


@dataclass
class TrainConfig:
    steps: int = 100
    # Trajectories per optimizer step (fresh + replayed).
    batch_size: int = 8
    # Learning rate of the policy's LoRA parameters.
    learning_rate: float = 1e-4
    # Learning rate of the flow estimator.
    flow_learning_rate: float = 1e-3
    # Share of each batch drawn from the replay buffer.
    replay_fraction: float = 0.25
    replay_capacity: int = 1000
    replay_sampling: Literal["uniform", "prioritized", "top_k"] = "prioritized"
    # Sharpness alpha of prioritized replay: softmax(alpha * log R).
    replay_alpha: float = 1.0
    # Steps between checkpoints; the final step always checkpoints.
    checkpoint_every: int = 50
    # Checkpoints kept on disk (older ones are deleted); final/ is kept apart from them.
    keep_checkpoints: int = 2
    # Failed steps (a lost Tinker request, a poisoned client) recovered by reloading the last
    # checkpoint in-process, as resume= would; 0 stops at the first.
    max_reloads: int = 3
    max_grad_norm: float = 1.0
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)


@dataclass
class RunnerConfig:
    # Where the policy runs: local (Accelerate/DeepSpeed) or the hosted Tinker API.
    name: Literal["local", "tinker"] = "local"
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LoggingConfig:
    # console: metric lines on the console only. jsonl: also every step in metrics.jsonl.
    # wandb: jsonl plus Weights & Biases.
    backend: Literal["console", "jsonl", "wandb"] = "jsonl"
    # Steps between console lines and W&B points (metrics.jsonl keeps every step).
    every: int = 1
    # W&B project, and mode: null follows WANDB_MODE (online when unset); offline needs no
    # network.
    project: str = "synthstats"
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    # W&B entity (team or user; null: your default), run group and tags.
    wandb_entity: str | None = None
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    # Steps between W&B tables of sampled programs (ELPD, log R, validity); 0: none.
    programs_every: int = 10
    # Upload final/ (the trained policy) to W&B as a model artifact at the end of a run.
    wandb_log_model: bool = False


@dataclass
class SftWarmstartConfig:
    # Seed the replay buffer with demonstrations before training.
    enabled: bool = False
    # JSONL of {"prompt", "completion"} lines, or builtin:ENV for an env's shipped ones.
    data_path: str | None = None
    # Score every demonstration with the judge (cached); else use each line's elpd.
    compute_rewards: bool = False
    # Remove <think> spans from demonstrations.
    strip_thinking: bool = False
    max_examples: int | None = None
    # Clamp of log-rewards derived from demonstrations.
    log_clamp: list[float] = field(default_factory=lambda: [-700.0, 700.0])
    show_progress: bool = True
    # Drop repeated programs before scoring (the replay buffer keeps one item per program).
    dedupe: bool = True
    # Skip (and count in the log) invalid lines instead of stopping with an error.
    skip_invalid: bool = False
    # ELPD used for a line without one when compute_rewards is false.
    default_elpd: float | None = None
    # Steps of plain likelihood (NLL) on the demonstrations before the GFlowNet phase, for
    # a policy that cannot yet write a program; 0 skips the supervised phase.
    nll_steps: int = 0


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sft_warmstart: SftWarmstartConfig = field(default_factory=SftWarmstartConfig)
    # Where the run writes everything; empty means runs/<env>-<timestamp>.
    output_dir: str = ""
    # A run directory to resume from.
    resume: str | None = None
    seed: int = 0

    # Dotted keys the user set (command line, --config-file), filled in by resolve():
    # recipes and presets change only what the user left unset. Not a field: never saved.
    user_set: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        found = problems(self)
        if found:
            raise ConfigError(*found)


def _at_least(config: Config, minimum: float, *keys: str) -> list[str]:
    return [
        f"{key} must be >= {minimum:g}, got {value}"
        for key in keys
        if (value := _dotted_get(config, key)) < minimum
    ]


def _positive(config: Config, *keys: str) -> list[str]:
    return [
        f"{key} must be > 0, got {value}"
        for key in keys
        if (value := _dotted_get(config, key)) <= 0
    ]


def problems(config: Config) -> list[str]:
    """Every range and relation the settings break, so one run reports them all."""
    found = _at_least(
        config,
        1,
        *("policy.lora_r", "policy.max_new_tokens", "judge.draws", "judge.chains"),
        *("judge.memory_mb", "judge.max_processes", "judge.max_output_bytes"),
        *("judge.max_file_mb", "runner.train.steps", "runner.train.batch_size"),
        *("runner.train.checkpoint_every", "runner.train.replay_capacity"),
        *("runner.train.keep_checkpoints", "logging.every"),
    )
    found += _at_least(
        config,
        0,
        *("judge.tune", "judge.workers", "objective.reward.anneal_steps"),
        *("logging.programs_every", "policy.max_retries", "runner.train.max_reloads"),
        *("objective.failure_weight", "sft_warmstart.nll_steps"),
    )
    found += _positive(
        config,
        *("judge.timeout_s", "runner.train.learning_rate", "runner.train.flow_learning_rate"),
        *("objective.log_z_lr", "objective.reward.temperature", "policy.request_timeout_s"),
        "policy.queue_timeout_s",
    )
    policy = config.policy
    if policy.kind in ("hf", "tinker") and not policy.model_name.strip():
        found.append(
            f"policy.kind={policy.kind} needs policy.model_name (a hub id such as "
            "Qwen/Qwen3-0.6B, or a local model folder)"
        )
    if not policy.lora_target_modules:
        found.append("policy.lora_target_modules must name at least one module, e.g. [q_proj]")
    if policy.lora_dropout != 0.0:
        found.append(
            f"policy.lora_dropout={policy.lora_dropout} would have no effect: every log P_F "
            "the loss uses is computed with dropout off, so that it is the sampler's own "
            "(README, 'Dropout'); remove the setting or set policy.lora_dropout=0"
        )
    objective = config.objective
    if not 0.0 < objective.lamda <= 1.0:
        found.append(f"objective.lamda must be in (0, 1], got {objective.lamda}")
    if objective.tb_anchor_weight < 0:
        found.append(f"objective.tb_anchor_weight must be >= 0, got {objective.tb_anchor_weight}")
    reward = objective.reward
    if reward.low >= reward.high:
        found.append(
            f"objective.reward.low must be below objective.reward.high "
            f"({reward.low} >= {reward.high})"
        )
    if reward.failure_log_reward >= reward.low:
        found.append(
            "objective.reward.failure_log_reward must be below objective.reward.low "
            f"({reward.failure_log_reward} >= {reward.low}): failed programs must never "
            "outrank valid ones"
        )
    if reward.final_temperature is not None and reward.final_temperature <= 0:
        found.append(
            f"objective.reward.final_temperature must be > 0, got {reward.final_temperature}"
        )
    if not 0.0 < config.judge.target_accept < 1.0:
        found.append(f"judge.target_accept must be in (0, 1), got {config.judge.target_accept}")
    train = config.runner.train
    if not 0.0 <= train.replay_fraction < 1.0:
        found.append(f"runner.train.replay_fraction must be in [0, 1), got {train.replay_fraction}")
    exploration = train.exploration
    if exploration.temperature_min > exploration.temperature_max:
        found.append(
            "runner.train.exploration.temperature_min must be <= temperature_max "
            f"({exploration.temperature_min} > {exploration.temperature_max})"
        )
    found += _positive(config, "runner.train.exploration.temperature_min")
    if not 0.0 <= exploration.tempered_share <= 1.0:
        found.append(
            "runner.train.exploration.tempered_share must be in [0, 1], "
            f"got {exploration.tempered_share}"
        )
    if config.sft_warmstart.enabled and not config.sft_warmstart.data_path:
        found.append(
            "sft_warmstart.enabled=true needs sft_warmstart.data_path=FILE "
            "(a JSONL of demonstrations, or builtin:ENV)"
        )
    clamp = config.sft_warmstart.log_clamp
    if len(clamp) != 2 or clamp[0] >= clamp[1]:
        found.append(
            f"sft_warmstart.log_clamp must be [low, high] with low < high, "
            f"got {config.sft_warmstart.log_clamp}"
        )
    return found


def _dotted_get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def configs_dir() -> Path:
    """The YAML groups: shipped inside the wheel, or the repository's configs/ folder."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_configs", package.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no configs/ folder found next to {package}")


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (configs_dir() / group).glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(loaded).__name__}")
    return loaded


def load_group(group: str, option: str) -> dict[str, Any]:
    path = configs_dir() / group / f"{option}.yaml"
    if not path.is_file():
        available = ", ".join(group_options(group))
        raise ConfigError(f"unknown {group} {option!r}; available: {available}")
    return _read_yaml(path)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(argument: str) -> tuple[str, Any]:
    key, sep, raw = argument.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"cannot read {argument!r}: expected GROUP=OPTION (env=dugongs) or "
            "dotted.key=value (runner.train.steps=100)"
        )
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        # YAML 1.1 reads on/off/yes/no as booleans; keep the word, so a choice field
        # (thinking=on) is told what was typed. A bool field still accepts the word.
        value = raw.strip()
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _split_layer(layer: dict[str, Any], selections: dict[str, str]) -> dict[str, Any]:
    """Group keys holding a string select a group file; everything else is an override."""
    overrides = {}
    for key, value in layer.items():
        if key in GROUPS and isinstance(value, str):
            selections[key] = value
        else:
            overrides[key] = value
    return overrides


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys |= _leaf_keys(value, dotted + ".") if isinstance(value, dict) else {dotted}
    return keys


def resolve(arguments: list[str], config_file: str | None = None) -> Config:
    """Build the validated Config from root defaults, a config file and CLI arguments.

    Every problem found is reported in one ConfigError. `Config.user_set` records the
    dotted keys given in the config file or on the command line.
    """
    root = _read_yaml(configs_dir() / "config.yaml")
    selections: dict[str, str] = dict(root.pop("defaults", {}) or {})
    layers = [_split_layer(root, selections)]
    user_layers = []
    if config_file is not None:
        layers.append(_split_layer(_read_yaml(Path(config_file)), selections))
        user_layers.append(layers[-1])
    command_line: dict[str, Any] = {}
    for argument in arguments:
        key, value = _parse_override(argument)
        if key in GROUPS and "." not in key:
            if not isinstance(value, str):
                value = str(value)
            selections[key] = value
        else:
            _set_dotted(command_line, key, value)
    layers.append(command_line)
    user_layers.append(command_line)

    tree: dict[str, Any] = {}
    errors: list[str] = []
    for group, option in selections.items():
        if group not in GROUPS:
            raise ConfigError(f"configs/config.yaml: unknown group {group!r} in defaults")
        try:
            tree[group] = load_group(group, option)
        except ConfigError as error:
            errors.extend(error.problems)
            tree[group] = {}
    tree["judge"].setdefault("name", selections.get("judge", "default"))
    resume = next((layer["resume"] for layer in reversed(layers) if layer.get("resume")), None)
    if resume is not None:
        layers.insert(1, _saved_run_config(Path(str(resume))))
    for layer in layers:
        tree = _merge(tree, layer)
    config = build(Config, tree, "", errors)
    if errors:
        raise ConfigError(*errors)
    config.user_set = frozenset(key for layer in user_layers for key in _leaf_keys(layer))
    if not config.output_dir:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        config.output_dir = str(Path("runs") / f"{config.env.name}-{stamp}")
    return config


def _saved_run_config(run_dir: Path) -> dict[str, Any]:
    """A resumed run starts from the config it was started with; the command line still wins."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={run_dir}: no config.yaml there; is it a run directory?")
    return _read_yaml(saved)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list[{_type_name(item)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_YAML_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


def _given(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(annotation: Any, value: Any, key: str) -> Any:
    """Check one leaf value against its annotation; ints may stand in for floats."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                continue
    elif origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, bool):
            # YAML reads a bare off/on/no/yes as a boolean; map it back to the word.
            value = next((c for c in choices if c in _YAML_BOOL_WORDS[value]), value)
        if value in choices and not isinstance(value, bool):
            return value
    elif origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, list | tuple):
            return [
                _coerce(item, element, f"{key}[{index}]") for index, element in enumerate(value)
            ]
    elif annotation is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # YAML 1.1 reads 1e-3 (no dot) as a string; a float field means a number.
            return float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            for meaning, words in _YAML_BOOL_WORDS.items():
                if word in words:
                    return meaning
    elif annotation is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {_given(value)}")


def build(cls: type, tree: Any, prefix: str, errors: list[str] | None = None) -> Any:
    """Validate a nested dict into dataclass `cls`, naming the full key of any mistake.

    With `errors` given, every problem is appended there (a bad key keeps its default) and
    the caller raises once; without it the first problem raises.
    """
    collect = errors is not None
    found: list[str] = errors if errors is not None else []
    where = prefix or "the root config"
    if not isinstance(tree, dict):
        found.append(f"{where}: expected a mapping of keys, got {_given(tree)}")
        tree = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in tree.items():
        full_key = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = (
                f"; did you mean {(prefix + '.' if prefix else '') + close[0]}?"
                if close
                else (f"; valid keys here: {', '.join(fields)}")
            )
            found.append(f"unknown key {full_key!r}{hint}")
            continue
        annotation = hints[key]
        try:
            if dataclasses.is_dataclass(annotation):
                kwargs[key] = build(annotation, value, full_key, found)
            else:
                kwargs[key] = _coerce(annotation, value, full_key)
        except ConfigError as error:
            found.extend(error.problems)
        if not collect and found:
            raise ConfigError(*found)
    try:
        return cls(**kwargs)
    except ConfigError as error:
        if not collect:
            raise
        found.extend(error.problems)
        return cls.__new__(cls)


def load_judge_config(name: str) -> JudgeConfig:
    """A judge config by its configs/judge/ name (for `synthstats score` and the pool)."""
    tree = load_group("judge", name)
    tree.setdefault("name", name)
    return build(JudgeConfig, tree, "judge")


def to_yaml(config: Config) -> str:
    """The settings as they run: what --dry-run prints and a run directory keeps."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
