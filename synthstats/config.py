"""Typed run configuration: YAML groups in configs/ plus `key=value` overrides.

A run config is assembled in three layers, later layers winning: the root defaults
(configs/config.yaml) and the group files they select, a user's `--config-file`, and the
command line. The result is validated into the dataclasses below, so the rest of the code
reads attributes, never untyped dict lookups.
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
from typing import Any, Literal

import yaml

from synthstats.errors import UserFacingError

GROUPS = ("env", "policy", "objective", "judge", "runner", "logging")


class ConfigError(UserFacingError, ValueError):
    """A user-facing configuration mistake; the message says what to change."""


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
    # LoRA rank, scale and dropout for the trainable adapter.
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
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
    # Tinker only: Adam of the hosted LoRA weights (defaults are Tinker's own).
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-12
    # Tinker only: seconds to wait for one request's answer before stopping with an error.
    request_timeout_s: float = 600.0
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
    # Per-program limits inside the sandbox.
    timeout_s: float = 120.0
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
    max_grad_norm: float = 1.0
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)


@dataclass
class RunnerConfig:
    # Where the policy runs: local (Accelerate/DeepSpeed) or the hosted Tinker API.
    name: Literal["local", "tinker"] = "local"
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LoggingConfig:
    # console prints a line per step; jsonl also writes metrics.jsonl; wandb adds W&B.
    backend: Literal["console", "jsonl", "wandb"] = "jsonl"
    # Steps between metric lines.
    every: int = 1
    # W&B project, and mode: null follows WANDB_MODE (online when unset); offline needs no
    # network.
    project: str = "synthstats"
    wandb_mode: Literal["online", "offline", "disabled"] | None = None


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

    def __post_init__(self) -> None:
        if self.sft_warmstart.enabled and not self.sft_warmstart.data_path:
            raise ConfigError(
                "sft_warmstart.enabled=true needs sft_warmstart.data_path=FILE "
                "(a JSONL of demonstrations, or builtin:ENV)"
            )
        clamp = self.sft_warmstart.log_clamp
        if len(clamp) != 2 or clamp[0] >= clamp[1]:
            raise ConfigError(
                f"sft_warmstart.log_clamp must be [low, high] with low < high, "
                f"got {self.sft_warmstart.log_clamp}"
            )
        train = self.runner.train
        if not 0.0 <= train.replay_fraction < 1.0:
            raise ConfigError(
                f"runner.train.replay_fraction must be in [0, 1), got {train.replay_fraction}"
            )
        for key in ("steps", "batch_size", "checkpoint_every"):
            if getattr(train, key) < 1:
                raise ConfigError(f"runner.train.{key} must be >= 1, got {getattr(train, key)}")
        if self.objective.failure_weight < 0:
            raise ConfigError(
                f"objective.failure_weight must be >= 0, got {self.objective.failure_weight}: "
                "a negative weight would push failure mass up"
            )
        if self.sft_warmstart.nll_steps < 0:
            raise ConfigError(
                f"sft_warmstart.nll_steps must be >= 0, got {self.sft_warmstart.nll_steps}"
            )
        reward = self.objective.reward
        if reward.temperature <= 0:
            raise ConfigError(f"objective.reward.temperature must be > 0, got {reward.temperature}")
        if reward.failure_log_reward >= reward.low:
            raise ConfigError(
                "objective.reward.failure_log_reward must be below objective.reward.low "
                f"({reward.failure_log_reward} >= {reward.low}): failed programs must never "
                "outrank valid ones"
            )


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


def resolve(arguments: list[str], config_file: str | None = None) -> Config:
    """Build the validated Config from root defaults, a config file and CLI arguments."""
    root = _read_yaml(configs_dir() / "config.yaml")
    selections: dict[str, str] = dict(root.pop("defaults", {}) or {})
    layers = [_split_layer(root, selections)]
    if config_file is not None:
        layers.append(_split_layer(_read_yaml(Path(config_file)), selections))
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

    tree: dict[str, Any] = {}
    for group, option in selections.items():
        if group not in GROUPS:
            raise ConfigError(f"configs/config.yaml: unknown group {group!r} in defaults")
        tree[group] = load_group(group, option)
    tree["judge"].setdefault("name", selections.get("judge", "default"))
    resume = next((layer["resume"] for layer in reversed(layers) if layer.get("resume")), None)
    if resume is not None:
        layers.insert(1, _saved_run_config(Path(str(resume))))
    for layer in layers:
        tree = _merge(tree, layer)
    config = build(Config, tree, "")
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
    elif annotation is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {_given(value)}")


def build(cls: type, tree: Any, prefix: str) -> Any:
    """Validate a nested dict into dataclass `cls`, naming the full key of any mistake."""
    where = prefix or "the root config"
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_given(tree)}")
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
            raise ConfigError(f"unknown key {full_key!r}{hint}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build(annotation, value, full_key)
        else:
            kwargs[key] = _coerce(annotation, value, full_key)
    return cls(**kwargs)


def load_judge_config(name: str) -> JudgeConfig:
    """A judge config by its configs/judge/ name (for `synthstats score` and the pool)."""
    tree = load_group("judge", name)
    tree.setdefault("name", name)
    return build(JudgeConfig, tree, "judge")


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
