"""report.json and the printed summary of a slot run: where the GFlowNet ended against p*,
where it started, and where a reward maximiser on the same budget ended. The slot policy can
also write failure programs, so TV, KL, ... are of p_theta(. | valid), and p(valid) and the
failure mass 1 - p(valid) stand beside them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthstats.config import Config
from synthstats.eval.tracking import SpaceTarget, finite
from synthstats.judge.space_scores import SpaceScores

# What the slot run on dugongs must reach (issue 10).
TV_GOAL = 0.05
LOGZ_ERROR_GOAL = 0.1
BASELINE_DESCRIPTION = "policy gradient: REINFORCE, batch-mean baseline, no entropy bonus"
_COMPARED = ("tv", "kl", "jsd", "spearman", "modes_covered", "p_valid")


@dataclass(frozen=True)
class TrainedPolicy:
    """One policy's training: its evaluation history and final p_theta over the space."""

    name: str
    steps: int  # steps trained: fewer than configured if a SIGTERM or Ctrl-C stopped it
    history: Sequence[Mapping[str, Any]]
    probabilities: np.ndarray  # p_theta(x | valid), in space.completions order
    seconds: float
    stopped_by: int | None = None  # the signal that stopped it early


def build_report(
    config: Config,
    target: SpaceTarget,
    scores: SpaceScores,
    ours: TrainedPolicy,
    baseline: TrainedPolicy,
    recipe: Mapping[str, Any],
    failure_programs: int,
) -> dict[str, Any]:
    """Every number the run claims, with what is needed to reproduce and judge it."""
    first, last, theirs = ours.history[0], ours.history[-1], baseline.history[-1]
    space = target.space
    train = config.runner.train
    report = {
        "env": space.env_name,
        "programs": len(space),
        "failure_programs": failure_programs,
        "reward_temperature": target.temperature,
        "reference_elpd": target.reference_elpd,
        "target_max_probability": target.max_probability,
        "target_tv_from_uniform": target.tv_from_uniform,
        "objective": config.objective.loss,
        "steps": last["step"],
        "batch_size": train.batch_size,
        "learning_rate": train.learning_rate,
        "log_z_lr": config.objective.log_z_lr,
        "seed": config.seed,
        "tv_initial": first["tv"],
        "p_valid_initial": first["p_valid"],
        "failure_mass": 1.0 - last["p_valid"],
        **{key: last[key] for key in (*_COMPARED, "logz_error", "log_z", "log_partition")},
        **{key: last[key] for key in ("modes_top_k", "modes_floor", "mass_in_space")},
        "baseline": BASELINE_DESCRIPTION,
        **{f"baseline_{key}": theirs[key] for key in _COMPARED},
        "goals": {"tv": TV_GOAL, "logz_error": LOGZ_ERROR_GOAL},
        "goals_met": bool(last["tv"] <= TV_GOAL and last["logz_error"] <= LOGZ_ERROR_GOAL),
        "seconds": ours.seconds,
        "baseline_seconds": baseline.seconds,
        "recipe": dict(recipe),
        "shipped_scores": {"judge_budget": scores.judge_budget, "versions": scores.versions},
        "per_program": _per_program(target, ours, baseline),
    }
    return finite(report)


def program_labels(target: SpaceTarget) -> list[str]:
    """A short readable name per program: its slot labels joined."""
    space = target.space
    return [" | ".join(space.labels(path).values()) for path in space.paths()]


def _per_program(
    target: SpaceTarget, ours: TrainedPolicy, baseline: TrainedPolicy
) -> list[dict[str, Any]]:
    return [
        {
            "program": label,
            "log_reward": log_reward,
            "target": float(p_target),
            ours.name: float(p_ours),
            baseline.name: float(p_baseline),
        }
        for label, log_reward, p_target, p_ours, p_baseline in zip(
            program_labels(target),
            target.log_reward.values(),
            target.probabilities,
            ours.probabilities,
            baseline.probabilities,
            strict=True,
        )
    ]


def summary_text(report: Mapping[str, Any], ours: str, baseline: str) -> str:
    """The table printed at the end of a slot run."""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    rows = [
        ("TV at step 0", report["tv_initial"], report["tv_initial"]),
        (f"TV at step {report['steps']}", report["tv"], report["baseline_tv"]),
        ("p(valid) at step 0", report["p_valid_initial"], report["p_valid_initial"]),
        (f"p(valid) at step {report['steps']}", report["p_valid"], report["baseline_p_valid"]),
        ("KL(p* || p_theta)", report["kl"], report["baseline_kl"]),
        ("Jensen-Shannon", report["jsd"], report["baseline_jsd"]),
        ("log Z error", report["logz_error"], None),
        ("Spearman(log p_theta, log R)", report["spearman"], report["baseline_spearman"]),
        (
            f"modes covered (top {report['modes_top_k']})",
            report["modes_covered"],
            report["baseline_modes_covered"],
        ),
    ]
    met = "met" if report["goals_met"] else "NOT met"
    return "\n".join(
        [
            f"{report['env']}: {report['programs']} programs (+{report['failure_programs']} "
            "failure programs; TV, KL, ... of p_theta(. | valid)), reward temperature "
            f"{report['reward_temperature']:g} (max p* {report['target_max_probability']:.3f}, "
            f"TV(uniform, p*) {report['target_tv_from_uniform']:.3f})",
            f"{'':30}{ours:>14}{baseline:>18}",
            *(f"{name:30}{cell(a):>14}{cell(b):>18}" for name, a, b in rows),
            f"goals TV <= {TV_GOAL} and log Z error <= {LOGZ_ERROR_GOAL}: {met}",
            f"{report['steps']} steps of {report['batch_size']} in {report['seconds']:.0f} s "
            f"(baseline {report['baseline_seconds']:.0f} s); baseline: {report['baseline']}",
        ]
    )
