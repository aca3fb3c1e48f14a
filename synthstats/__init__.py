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
"""

__version__ = "0.1.0"
