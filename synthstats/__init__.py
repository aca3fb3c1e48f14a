"""SynthStats: a GFlowNet sampler over PyMC programs, rewarded by ELPD-LOO.

One sample, folder by folder, in the order the data flows. Imports run one way, in layers
(tests/test_layout.py): cli, maintain -> eval -> train -> backends -> judge -> envs,
objectives, replay -> config -> errors.

    envs/         the datasets, their prompts and reference programs, enumerable program spaces
    backends/     the policy samples completions and recomputes log P_F with gradient
                  (local transformers + PEFT under Accelerate, slot, Tinker)
    judge/        extracts each program, runs it contained, fits it with NUTS: ELPD-LOO
    objectives/   log R from the score, log Z, flows, TB / SubTB / DB: pure tensor math
    replay.py     stored token ids and scores, re-scored under the current policy
    train/        the loop that wires one step: sample, score, loss, update; SFT, checkpoints
    eval/         the jobs that check a policy: `synthstats eval`, the validation job
    cli.py        the commands (maintain.py: the maintainers' data tools)
    config.py     configs/ groups + key=value overrides -> validated settings (errors.py)

The Python API (api.py) loads on first use (PEP 562), so `import synthstats` stays light:

    from synthstats import resolve_config, run_training, score_program, evaluate
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "resolve_config": "synthstats.api",
    "run_training": "synthstats.api",
    "score_program": "synthstats.api",
    "score_programs": "synthstats.api",
    "evaluate": "synthstats.api",
    "Config": "synthstats.config",
    "ConfigError": "synthstats.config",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'synthstats' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
