"""`synthstats-train`'s body for a language-model policy: build the parts a config names,
then run the loop. (The default policy=slot is the validation job, eval/validation.py.)

synthstats-train runner=local env=dugongs policy=hf_qwen3_0_6b
synthstats-train resume=runs/dugongs-20261125-101500       # continue a stopped run
"""

from __future__ import annotations

import logging
from pathlib import Path

from synthstats.backends import build_backend
from synthstats.backends.distributed import Distributed
from synthstats.config import Config, to_yaml
from synthstats.envs import get_env
from synthstats.judge.pool import JudgePool, default_workers
from synthstats.judge.sandbox import containment_for
from synthstats.objectives import build_objective
from synthstats.progress import progress_bar
from synthstats.train.checkpoint import export_final, latest_checkpoint, load_loop_state
from synthstats.train.loop import LoopState, Trainer
from synthstats.train.metrics import MetricsLogger
from synthstats.train.run_dir import RunError, RunSummary, open_run_dir, setup_logging
from synthstats.train.sft import supervised_phase, warmstart_items

log = logging.getLogger("synthstats.train")


def run(config: Config, *, show_progress: bool = True) -> RunSummary:
    """Train as configured, until the configured steps, a SIGTERM or a Ctrl-C.

    Under `accelerate launch` every rank runs this; the main rank writes the run directory.
    """
    if config.policy.kind == "slot":
        raise RunError("policy=slot is the validation job: run it with run_validation")
    distributed = Distributed.from_environment()
    # The default output_dir holds a timestamp: every rank takes the main rank's.
    config.output_dir = distributed.broadcast(config.output_dir)
    run_dir, checkpoint = open_run_dir(config)
    setup_logging(run_dir, rank=distributed.rank)
    config_yaml = to_yaml(config)
    if distributed.is_main:
        (run_dir / "config.yaml").write_text(config_yaml)
    env = get_env(config.env.name)
    _log_start(config, run_dir, distributed)
    backend = build_backend(config, distributed=distributed)
    resumed_step = None
    if checkpoint is not None:
        backend.load(checkpoint / "policy")
        resumed_step = load_loop_state(checkpoint)["step"]
    metrics = None
    if distributed.is_main:
        metrics = MetricsLogger(run_dir, config.logging, resume_after=resumed_step)
    try:
        if metrics is not None and config.logging.backend == "wandb":
            metrics.start_wandb(config, run_dir)
        with JudgePool(config.judge) as judge:
            log.info(
                "judge: %d worker(s), sandbox %s, budget %s",
                config.judge.workers or default_workers(),
                containment_for(config.judge.sandbox),
                f"{config.judge.draws} draws x {config.judge.chains} chains",
            )
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
                demonstrations = warmstart_items(
                    config, env, backend, judge, show_progress=show_progress and distributed.is_main
                )
                supervised_phase(
                    config,
                    backend,
                    [item.completion_ids for item in demonstrations],
                    trainer.prompt_ids,
                    metrics,
                    show_progress=show_progress and distributed.is_main,
                )
                state = trainer.new_state(demonstrations)
            total = config.runner.train.steps
            with progress_bar(
                total,
                f"training {env.name}",
                show=show_progress and distributed.is_main,
                unit="step",
                initial=state.step,
            ) as bar:
                state = trainer.run(state, progress=bar.update)
        summary = RunSummary(run_dir, state.step, total, trainer.stopped_by)
        if summary.finished and distributed.is_main:
            final = export_final(run_dir, latest_checkpoint(run_dir), _tokenizer(backend))
            if metrics is not None:
                metrics.log_model(final, f"{run_dir.name}-final")
    finally:
        if metrics is not None:
            metrics.close()
    if summary.finished:
        log.info("finished %d steps; run directory: %s", total, run_dir)
        log.info("trained policy: %s (evaluate: synthstats eval %s)", run_dir / "final", run_dir)
    else:
        log.warning("stopped at step %d of %d; continue with resume=%s", state.step, total, run_dir)
    return summary


def _log_start(config: Config, run_dir: Path, distributed: Distributed) -> None:
    policy = config.policy
    model = "a tiny random Qwen3 (policy=mock)" if policy.kind == "mock" else policy.model_name
    log.info(
        "run directory %s; %d process(es); env %s; policy %s (%s, LoRA r=%d); %d steps of %d",
        run_dir,
        distributed.world_size,
        config.env.name,
        model,
        config.runner.name,
        policy.lora_r,
        config.runner.train.steps,
        config.runner.train.batch_size,
    )


def _tokenizer(backend: object) -> object | None:
    """The local policy's tokenizer, saved beside the final adapter (None elsewhere)."""
    return getattr(backend, "tokenizer", None)
