"""policy=slot, the default job: show that the loop learns to sample in proportion to reward.

The slot policy trains through the real loop, objective and replay on the judge's shipped
scores of its env's program space (no PyMC run, so a CPU finishes in a minute or two).
It can also write each program with a failure edit that the judge's gate refuses
(synthstats/envs/spaces/failures.py), so the failure treatment is checked too: the exact
distance of p_theta(. | valid) from p* = R / sum R and p(valid) are measured as it learns;
then a reward maximiser with the same architecture, steps and batch size trains on the
same scores. The run
directory gets report.json, evaluation.jsonl (both policies' metrics over the steps),
programs.png, curves.png, metrics.jsonl (the GFlowNet's loop metrics; the baseline's are in
baseline/), and the summary is printed.

    synthstats-train                                        # dugongs
    synthstats-train env=peregrines policy=slot runner.train.steps=3000
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from synthstats.backends import build_backend
from synthstats.config import Config, ConfigError, to_yaml
from synthstats.envs import get_env
from synthstats.envs.base import Env
from synthstats.envs.spaces import get_space
from synthstats.envs.spaces.failures import every_failure_program
from synthstats.eval.baseline import PolicyGradient
from synthstats.eval.plots import plot_curves, plot_programs
from synthstats.eval.recipe import apply_slot_recipe
from synthstats.eval.report import (
    TV_GOAL,
    TrainedPolicy,
    build_report,
    program_labels,
    summary_text,
)
from synthstats.eval.target import space_reference_elpd
from synthstats.eval.tracking import MetricsTracker, SpaceTarget
from synthstats.judge.shipped import ShippedScoresJudge
from synthstats.objectives import Objective, build_objective
from synthstats.progress import progress_bar
from synthstats.train.checkpoint import export_final, latest_checkpoint
from synthstats.train.loop import Trainer
from synthstats.train.metrics import MetricsLogger
from synthstats.train.run_dir import RunSummary, open_run_dir, setup_logging

log = logging.getLogger("synthstats.eval")

GFLOWNET, BASELINE = "gflownet", "reward maximiser"
# Exact evaluations per policy over a run (each is one forward pass over the space).
EVALUATIONS = 100


def run_validation(config: Config, *, show_progress: bool = True) -> RunSummary:
    """Train the slot policy and the baseline, then write the report and plots and print
    the summary. RunSummary counts the steps of both trainings."""
    _refuse_unsupported(config)
    try:
        space = get_space(config.env.name)
    except ValueError as error:
        raise ConfigError(
            f"{error}. policy=slot (the default) needs one; for other envs choose a language "
            "model, e.g. policy=hf_qwen3_0_6b"
        ) from None
    run_dir, _ = open_run_dir(config)
    setup_logging(run_dir)
    config, recipe = apply_slot_recipe(config, space)
    for key, value in recipe.items():
        log.info(
            "policy=slot: %s=%s (in place of the shipped default; set it to choose)", key, value
        )
    (run_dir / "config.yaml").write_text(to_yaml(config))
    failures = every_failure_program(space)
    judge = ShippedScoresJudge(space, failures)
    log.info(
        "scoring from the judge's shipped scores of the %d %s programs (budget %s), and the "
        "gate's refusal of their %d failure edits",
        len(space),
        space.env_name,
        judge.shipped.judge_budget,
        len(failures),
    )
    reference_elpd = space_reference_elpd(judge.shipped)
    env = dataclasses.replace(get_env(config.env.name), reference_elpd=reference_elpd)
    target = SpaceTarget.of(space, judge.shipped, reference_elpd, config.objective.reward)
    steps = config.runner.train.steps

    def train(name: str, cfg: Config, objective: Objective, directory: Path) -> TrainedPolicy:
        return _train(
            name, cfg, env, judge, objective, directory, target, show_progress=show_progress
        )

    with _one_torch_thread():
        ours = train(GFLOWNET, config, build_objective(config.objective), run_dir)
        if ours.steps < steps:
            return _stopped(run_dir, ours.steps, steps, ours.stopped_by)
        baseline_config = reward_maximiser_config(config)
        baseline = train(BASELINE, baseline_config, PolicyGradient(), run_dir / "baseline")
        if baseline.steps < steps:
            return _stopped(run_dir, steps + baseline.steps, steps, baseline.stopped_by)
    report = build_report(config, target, judge.shipped, ours, baseline, recipe, len(failures))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(run_dir, target, ours, baseline)
    final = export_final(run_dir, latest_checkpoint(run_dir))
    if config.logging.backend == "wandb":
        metrics = MetricsLogger(run_dir, dataclasses.replace(config.logging, backend="console"))
        try:
            metrics.start_wandb(config, run_dir)
            metrics.log_summary(report, [run_dir / "programs.png", run_dir / "curves.png"])
            metrics.log_model(final, f"{run_dir.name}-final")
        finally:
            metrics.close()
    print(summary_text(report, GFLOWNET, BASELINE))
    print(f"report, plots and metrics: {run_dir}; trained policy: {final}")
    return RunSummary(run_dir, 2 * steps, 2 * steps)


def reward_maximiser_config(config: Config) -> Config:
    """The baseline's config: on-policy (no replay, no tempered samples), since REINFORCE's
    gradient is unbiased only for samples of the current policy; no log Z table or flows."""
    train = config.runner.train
    return dataclasses.replace(
        config,
        objective=dataclasses.replace(config.objective, loss="tb", log_z="vargrad"),
        runner=dataclasses.replace(
            config.runner,
            train=dataclasses.replace(
                train,
                replay_fraction=0.0,
                exploration=dataclasses.replace(train.exploration, tempered_share=0.0),
            ),
        ),
    )


def _refuse_unsupported(config: Config) -> None:
    """What a slot run cannot honour, said before any work."""
    reward = config.objective.reward
    problems = {
        "resume": bool(config.resume),
        "sft_warmstart.enabled=true": config.sft_warmstart.enabled,
        "objective.reward.final_temperature (annealing)": reward.final_temperature is not None,
        "objective.log_z=vargrad": config.objective.log_z != "learned",
        "policy.thinking=latent": config.policy.thinking != "off",
    }
    found = [name for name, present in problems.items() if present]
    if found:
        raise ConfigError(
            f"policy=slot does not support {', '.join(found)}: a slot run takes a minute or "
            "two from scratch against one fixed target p*, and reports the learned log Z"
        )


def _train(
    name: str,
    config: Config,
    env: Env,
    judge: ShippedScoresJudge,
    objective: Objective,
    run_dir: Path,
    target: SpaceTarget,
    *,
    show_progress: bool,
) -> TrainedPolicy:
    """One policy through the loop, measured at step 0 and every few steps after."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = to_yaml(config)
    (run_dir / "config.yaml").write_text(config_yaml)
    backend = build_backend(config)
    metrics = MetricsLogger(run_dir, config.logging)
    steps = config.runner.train.steps
    try:
        if config.logging.backend == "wandb":
            metrics.start_wandb(config, run_dir)
        trainer = Trainer(config, env, backend, judge, objective, metrics, run_dir, config_yaml)
        with progress_bar(steps, f"{env.name}: {name}", show=show_progress, unit="step") as bar:
            tracker = MetricsTracker(
                name,
                backend,
                target,
                interval=max(1, steps // EVALUATIONS),
                total=steps,
                path=run_dir / "evaluation.jsonl",
                advance=bar.update,
                learned_log_z=config.objective.log_z == "learned",
            )
            tracker.record()
            started = time.perf_counter()
            state = trainer.run(trainer.new_state(), progress=tracker)
            seconds = time.perf_counter() - started
    finally:
        metrics.close()
    log_p = backend.exact_log_probs()
    valid = np.exp([log_p[text] for text in target.space.completions])
    probabilities = valid / valid.sum()  # p_theta(x | valid), what p* is compared with
    return TrainedPolicy(
        name, state.step, tracker.history, probabilities, seconds, trainer.stopped_by
    )


def _plot(run_dir: Path, target: SpaceTarget, ours: TrainedPolicy, baseline: TrainedPolicy) -> None:
    env = target.space.env_name
    plot_programs(
        run_dir / "programs.png",
        program_labels(target),
        target.probabilities,
        {policy.name: policy.probabilities for policy in (ours, baseline)},
        title=f"{env}: learned against target probability (T={target.temperature:g})",
    )
    plot_curves(
        run_dir / "curves.png",
        {policy.name: policy.history for policy in (ours, baseline)},
        log_partition=ours.history[-1]["log_partition"],
        tv_goal=TV_GOAL,
        title=f"{env}: distance to p* and learned log Z over training",
    )


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """The slot model is too small for intra-op threads to pay: on a busy 2-core CPU two
    threads made each step ten times slower (0.8 s against 0.06 s) than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _stopped(run_dir: Path, done: int, steps: int, stopped_by: int | None) -> RunSummary:
    log.warning(
        "stopped after %d of %d steps (both policies); slot runs do not resume: start a new one",
        done,
        2 * steps,
    )
    return RunSummary(run_dir, done, 2 * steps, stopped_by)
