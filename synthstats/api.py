"""The Python API for notebooks and scripts: the command line's defaults, as functions.

    import synthstats
    config = synthstats.resolve_config("policy=mock", "runner.train.steps=2")
    summary = synthstats.run_training(config)       # or run_training("policy=mock", ...)
    score = synthstats.score_program(open("model.py").read(), env="dugongs")
    report = synthstats.evaluate(summary.run_dir, samples=16)

`import synthstats` loads none of this (PEP 562 in synthstats/__init__.py): the judge's
children run under an address-space limit that torch, transformers and peft alone fill.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from synthstats.config import Config, resolve

if TYPE_CHECKING:
    from synthstats.judge.score import Score
    from synthstats.train.run_dir import RunSummary


def resolve_config(*overrides: str, config_file: str | Path | None = None) -> Config:
    """The validated config `synthstats-train OVERRIDES... --dry-run` resolves (the keys
    given here count as set by the user, so recipes never replace them)."""
    return resolve(list(overrides), None if config_file is None else str(config_file))


def run_training(
    config: Config | str | None = None, *overrides: str, show_progress: bool = True
) -> RunSummary:
    """Train as `synthstats-train` does and return the RunSummary (run_dir, step, steps).

    `config` is a resolved Config or the first of the key=value overrides. Inputs are
    checked before anything is created; mistakes raise ConfigError, and a start that fails
    leaves no run directory behind.
    """
    from synthstats.train.preflight import check_inputs

    if not isinstance(config, Config):
        config = resolve_config(*([] if config is None else [config]), *overrides)
    elif overrides:
        raise TypeError("give overrides as strings only, or a Config alone")
    check_inputs(config)
    if config.policy.kind == "slot":
        from synthstats.eval.validation import run_validation as run
    else:
        from synthstats.train.run import run
    from synthstats.train.run_dir import remove_unstarted

    run_dir = Path(config.resume or config.output_dir)
    existed = run_dir.exists()
    try:
        return run(config, show_progress=show_progress)
    except BaseException:
        if not existed:
            remove_unstarted(run_dir)
        raise


def score_program(
    program: str,
    env: str,
    *,
    judge: str = "default",
    cache: bool = True,
) -> Score:
    """Score one program (a bare PyMC program or a whole completion, as `synthstats score`
    reads a file) on `env`'s data with the sandboxed judge."""
    return score_programs([program], env, judge=judge, cache=cache)[0]


def score_programs(
    programs: list[str], env: str, *, judge: str = "default", cache: bool = True
) -> list[Score]:
    """Score many programs at once on a pool of sandboxed workers, in input order."""
    from synthstats.config import load_judge_config
    from synthstats.envs import get_env
    from synthstats.judge.cli import as_completion
    from synthstats.judge.pool import JudgePool

    judge_cfg = load_judge_config(judge)
    texts = [as_completion(program) for program in programs]
    workers = min(judge_cfg.workers or len(texts), len(texts))
    with JudgePool(judge_cfg, workers=workers, cache=None if cache else False, eager=False) as pool:
        return pool.score(get_env(env), texts)


def evaluate(
    run_dir: str | Path, *, samples: int = 64, checkpoint: str | Path | None = None
) -> dict:
    """`synthstats eval RUN_DIR`: the report dict (also written as RUN_DIR/eval_report.json)."""
    from synthstats.eval.evaluate import evaluate as evaluate_run

    return evaluate_run(
        Path(run_dir), samples=samples, checkpoint=None if checkpoint is None else Path(checkpoint)
    )


__all__ = ["evaluate", "resolve_config", "run_training", "score_program", "score_programs"]
