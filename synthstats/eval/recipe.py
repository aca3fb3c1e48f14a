"""The settings a slot run uses where the config keeps the language-model defaults.

The shipped defaults suit a LoRA language model: 100 steps, log Z learned at 0.1, reward
temperature 1. A slot run needs more steps to converge, a slower log Z (at 0.1 Adam keeps
it wobbling by about 0.1 around log sum R, the size of the target error) and its space's
reward temperature (the one that makes p* a hard target); it does not resume, so it writes
only the final checkpoint (the trained policy).

A setting the user gave (on the command line or in a config file: `Config.user_set`) is
always kept, even when it equals the shipped default (runner.train.steps=100 runs 100
steps); every other one takes the slot value. The filled-in values are logged and saved in
the run's config.yaml.
"""

from __future__ import annotations

import copy
from typing import Any

from synthstats.config import Config
from synthstats.envs.spaces.grammar import ProgramSpace

SLOT_STEPS = 2000
SLOT_LOG_Z_LR = 0.01
# Console metric lines per run (instead of one per step).
SLOT_CONSOLE_LINES = 10


def slot_settings(space: ProgramSpace, steps: int) -> dict[str, Any]:
    """Dotted config key -> the value a slot run on this space uses by default."""
    return {
        "runner.train.steps": steps,
        "objective.log_z_lr": SLOT_LOG_Z_LR,
        "objective.reward.temperature": space.reward_temperature,
        "runner.train.checkpoint_every": steps,
        "logging.every": max(1, steps // SLOT_CONSOLE_LINES),
    }


def apply_slot_recipe(config: Config, space: ProgramSpace) -> tuple[Config, dict[str, Any]]:
    """A copy of config with the slot settings wherever the user set nothing, and the
    settings that were filled in."""
    filled_config = copy.deepcopy(config)
    given = config.user_set
    steps = _get(config, "runner.train.steps") if "runner.train.steps" in given else SLOT_STEPS
    filled: dict[str, Any] = {}
    for key, value in slot_settings(space, steps).items():
        if key not in given and _get(config, key) != value:
            _set(filled_config, key, value)
            filled[key] = value
    return filled_config, filled


def _get(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _set(config: Config, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = config
    for part in parents:
        node = getattr(node, part)
    setattr(node, last, value)
