"""`synthstats-train`'s body: build the parts a config names, then run the loop.

synthstats-train runner=local env=dugongs policy=hf_qwen3_0_6b
synthstats-train resume=runs/dugongs-20261125-101500       # continue a stopped run
synthstats-train                                           # the validation job (policy=slot)
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from synthstats.backends import build_backend
from synthstats.config import Config, to_yaml
from synthstats.envs import get_env
from synthstats.errors import UserFacingError
from synthstats.judge.pool import JudgePool
from synthstats.objectives import build_objective
from synthstats.sft import warmstart_items
from synthstats.train.checkpoint import latest_checkpoint, load_loop_state
from synthstats.train.distributed import Distributed
from synthstats.train.loop import LoopState, Trainer
from synthstats.train.metrics import MetricsLogger

log = logging.getLogger("synthstats.train")


class RunError(UserFacingError, RuntimeError):
    """A run that cannot start; the message says what to change."""


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    step: int
    steps: int

    @property
    def finished(self) -> bool:
        return self.step >= self.steps


def run(config: Config, *, show_progress: bool = True) -> RunSummary:
    """Train as configured, until the configured steps or a SIGTERM.

    Under `accelerate launch` every rank runs this; the main rank writes the run directory.
    """
    distributed = Distributed.from_environment()
    # The default output_dir holds a timestamp: every rank takes the main rank's.
    config.output_dir = distributed.broadcast(config.output_dir)
    run_dir, checkpoint = _run_dir(config)
    _setup_logging(run_dir, rank=distributed.rank)
    if config.policy.kind == "slot":
        from synthstats.eval.validation import run_validation

        return run_validation(config, run_dir, show_progress=show_progress)
    config_yaml = to_yaml(config)
    if distributed.is_main:
        (run_dir / "config.yaml").write_text(config_yaml)
    env = get_env(config.env.name)
    backend = build_backend(config, distributed=distributed)
    resumed_step = None
    if checkpoint is not None:
        backend.load(checkpoint / "policy")
        resumed_step = load_loop_state(checkpoint)["step"]
    metrics = None
    if distributed.is_main:
        metrics = MetricsLogger(run_dir, config.logging, resume_after=resumed_step)
        if config.logging.backend == "wandb":
            metrics.start_wandb(config, run_dir)
    try:
        with JudgePool(config.judge) as judge:
            trainer = Trainer(
                config,
                env,
                backend,
                judge,
                build_objective(config.objective),
                metrics,
                run_dir,
                config_yaml,
                distributed,
            )
            if checkpoint is not None:
                state = LoopState.from_state_dict(
                    distributed.rank_loop_state(load_loop_state(checkpoint)),
                    config.runner.train.replay_capacity,
                )
                log.info("resuming %s at step %d", run_dir, state.step)
            else:
                state = trainer.new_state(
                    warmstart_items(
                        config,
                        env,
                        backend,
                        judge,
                        show_progress=show_progress and distributed.is_main,
                    )
                )
            total = config.runner.train.steps
            with tqdm(
                total=total,
                initial=state.step,
                desc=f"training {env.name}",
                unit="step",
                disable=not show_progress or not sys.stderr.isatty() or not distributed.is_main,
            ) as bar:
                state = trainer.run(state, progress=bar.update)
    finally:
        if metrics is not None:
            metrics.close()
    summary = RunSummary(run_dir, state.step, total)
    if summary.finished:
        log.info("finished %d steps; run directory: %s", total, run_dir)
    else:
        log.warning("stopped at step %d of %d; continue with resume=%s", state.step, total, run_dir)
    return summary


def _run_dir(config: Config) -> tuple[Path, Path | None]:
    """The run directory, and the checkpoint to resume from (None for a new run)."""
    if config.resume:
        run_dir = Path(config.resume)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise RunError(f"resume={run_dir}: no checkpoint found under {run_dir}/checkpoints")
        return run_dir, checkpoint
    run_dir = Path(config.output_dir)
    if latest_checkpoint(run_dir) is not None:
        raise RunError(
            f"output_dir={run_dir} already holds a run; continue it with resume={run_dir}, "
            "or choose another output_dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, None


def _setup_logging(run_dir: Path, *, rank: int = 0) -> None:
    """Messages to stderr and to RUN_DIR/train.log: the one logging path of a run. Ranks
    other than the main one only print their warnings, marked with their rank."""
    main = rank == 0
    root = logging.getLogger("synthstats")
    root.setLevel(logging.INFO if main else logging.WARNING)
    marker = "" if main else f"[rank {rank}] "
    formatter = logging.Formatter(f"%(asctime)s {marker}%(levelname)s %(name)s: %(message)s")
    for previous in list(root.handlers):
        root.removeHandler(previous)
        previous.close()
    handlers = [logging.StreamHandler(sys.stderr)]
    if main:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
