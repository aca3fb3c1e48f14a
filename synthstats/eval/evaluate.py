"""`synthstats eval RUN_DIR`: measure a trained policy against its target.

Loads the run's policy from a checkpoint, samples N completions for the env's prompt at
temperature 1, scores them with the judge pool and reports validity, diversity, reward and
calibration (Spearman of log p_theta against log R; learned log Z against an
importance-sampling estimate of log sum R), with log p_theta the quantity training matched to
log R (for thinking: latent, less the think span's log p_ref). For policy=slot runs, whose
p_theta is enumerable, it reports the exact metrics of the validation job instead.

Writes RUN_DIR/eval_report.json and two PNGs (reward histogram; log p against log R).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthstats.backends.base import PolicyBackend
from synthstats.errors import UserFacingError
from synthstats.eval.metrics import importance_log_partition, spearman
from synthstats.judge.extract import extract_program
from synthstats.objectives import ThinkingMode, objective_log_reward
from synthstats.progress import gather, progress_bar
from synthstats.train.checkpoint import latest_checkpoint, load_loop_state

REPORT_NAME = "eval_report.json"
HISTOGRAM_PLOT = "eval_reward_histogram.png"
SCATTER_PLOT = "eval_logp_vs_logr.png"
HISTOGRAM_BINS = 10


class EvalError(UserFacingError):
    """A run directory or checkpoint that cannot be evaluated."""


def normalise_program(completion: str) -> str | None:
    """The completion's program with blank lines and trailing spaces removed; None if none."""
    program = extract_program(completion)
    if program is None:
        return None
    lines = [line.rstrip() for line in program.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def find_checkpoint(run_dir: Path, checkpoint: Path | None = None) -> Path:
    """The checkpoint to evaluate: `checkpoint` if given, else the run's latest."""
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is not a directory; pass a run directory (output_dir)")
    if not (run_dir / "config.yaml").is_file():
        raise EvalError(f"{run_dir} has no config.yaml; is it a synthstats run directory?")
    if checkpoint is None:
        found = latest_checkpoint(run_dir)
        if found is None:
            raise EvalError(
                f"{run_dir} has no checkpoint (checkpoints/latest is missing); train for at "
                "least one checkpoint, or pass --checkpoint PATH"
            )
        checkpoint = found
    if not (checkpoint / "policy").is_dir():
        raise EvalError(f"{checkpoint} is not a checkpoint: it has no policy/ folder")
    return checkpoint


def evaluate(run_dir: Path, *, samples: int = 64, checkpoint: Path | None = None) -> dict:
    """Evaluate a run's checkpoint; write the report and plots into run_dir; return the
    report."""
    from synthstats.config import ConfigError, resolve

    if samples < 1:
        raise EvalError(f"--samples must be at least 1, got {samples}")
    run_dir = Path(run_dir)
    checkpoint = find_checkpoint(run_dir, Path(checkpoint) if checkpoint else None)
    try:
        config = resolve([f"resume={run_dir}"])
    except ConfigError as error:
        raise EvalError(f"cannot rebuild the run's config from {run_dir}: {error}") from None
    step = _checkpoint_step(checkpoint)
    if config.policy.kind == "slot":
        report = _slot_report(config, checkpoint, step)
    else:
        report = _sampled_report(config, run_dir, checkpoint, step, samples)
    (run_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    if config.logging.backend == "wandb":
        _log_to_wandb(config, run_dir, report)
    return report


def _log_to_wandb(config, run_dir: Path, report: dict) -> None:
    """The report's numbers (as eval/KEY) and plots, into the run's own W&B run."""
    import dataclasses

    from synthstats.train.metrics import MetricsLogger

    logging_cfg = dataclasses.replace(config.logging, backend="console")
    metrics = MetricsLogger(run_dir, logging_cfg)
    try:
        metrics.start_wandb(config, run_dir)
        values = {f"eval/{key}": value for key, value in report.items()}
        metrics.log_summary(values, [Path(plot) for plot in report.get("plots", [])])
    finally:
        metrics.close()


def _checkpoint_step(checkpoint: Path) -> int:
    """The number of steps the checkpoint had completed (its loop state, else its name)."""
    try:
        state = load_loop_state(checkpoint)
        if isinstance(state, dict) and "step" in state:
            return int(state["step"])
    except (OSError, RuntimeError, ValueError):
        pass
    try:
        return int(checkpoint.name.removeprefix("step-"))
    except ValueError:
        return 0


def _sampled_report(config, run_dir: Path, checkpoint: Path, step: int, samples: int) -> dict:
    from synthstats.backends import build_backend
    from synthstats.backends.canonical import noncanonical_reason
    from synthstats.envs import get_env
    from synthstats.judge.pool import JudgePool
    from synthstats.objectives.reward import temperature_at, tempered_log_reward

    env = get_env(config.env.name)
    if env.reference_elpd is None:
        raise EvalError(f"env {env.name!r} has no recorded reference ELPD; cannot compute R")
    backend = build_backend(config)
    backend.load(checkpoint / "policy")
    prompt_ids = backend.render_prompt(env.render_prompt())
    rollouts = []
    chunk = max(1, int(config.runner.train.batch_size))
    with progress_bar(samples, f"sampling {env.name}", unit="sample") as bar:
        while len(rollouts) < samples:
            count = min(chunk, samples - len(rollouts))
            rollouts.extend(backend.sample(env.name, prompt_ids, [1.0] * count))
            bar.update(count)

    # As in training: a completion cut at max_new_tokens fails as no_program and one not in
    # canonical form as noncanonical, both unjudged.
    verdicts = [
        "no_program"
        if rollout.truncated
        else "noncanonical"
        if noncanonical_reason(
            rollout.completion_ids,
            rollout.text,
            thinking=config.policy.thinking,
            tokenize_completion=backend.tokenize_completion,
        )
        else None
        for rollout in rollouts
    ]
    to_judge = [r.text for r, verdict in zip(rollouts, verdicts, strict=True) if verdict is None]
    judged_scores = []
    if to_judge:
        with JudgePool(config.judge) as judge:
            futures = [judge.submit(env, text) for text in to_judge]
            judged_scores = gather(futures, f"scoring {env.name}", unit="program")
    judged = iter(judged_scores)
    scores = [None if verdict else next(judged) for verdict in verdicts]
    ok = [score is not None and score.ok for score in scores]
    elpd = [score.elpd_loo if score is not None and score.ok else math.nan for score in scores]
    error_kinds = Counter(
        verdict or str(score.error_kind)
        for verdict, score in zip(verdicts, scores, strict=True)
        if score is None or not score.ok
    )
    log_reward = [
        float(value)
        for value in tempered_log_reward(
            elpd, ok, reference_elpd=env.reference_elpd, step=step, cfg=config.objective.reward
        )
    ]
    log_p = program_log_probs(
        backend,
        config.policy.thinking,
        prompt_ids,
        [rollout.completion_ids for rollout in rollouts],
        log_reward,
    )
    programs = [normalise_program(rollout.text) for rollout in rollouts]

    valid = [index for index, good in enumerate(ok) if good]
    best = max(valid, key=lambda index: elpd[index]) if valid else None
    # One point per distinct valid program: its first sample's log p and its log R.
    first: dict[str, int] = {}
    for index in valid:
        first.setdefault(programs[index] or rollouts[index].text, index)
    distinct = list(first.values())

    spearman_value = None
    is_log_z = is_log_z_se = None
    if log_p is not None:
        if len(distinct) >= 2:
            spearman_value = _finite_or_none(
                spearman(np.array([log_p[i] for i in distinct]), [log_reward[i] for i in distinct])
            )
        estimate, se = importance_log_partition(log_reward, log_p)
        is_log_z, is_log_z_se = _finite_or_none(estimate), _finite_or_none(se)

    counts, edges = np.histogram(log_reward, bins=HISTOGRAM_BINS)
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "step": step,
        "policy_kind": config.policy.kind,
        "env": env.name,
        "samples": len(rollouts),
        "valid": len(valid),
        "validity_rate": len(valid) / len(rollouts),
        "error_kinds": dict(sorted(error_kinds.items())),
        "unique_programs": len({program for program in programs if program is not None}),
        "unique_valid_programs": len(distinct),
        "reward_temperature": float(temperature_at(step, config.objective.reward)),
        "reward_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "log_reward_mean": float(np.mean(log_reward)),
        "log_reward_max": float(np.max(log_reward)),
        "best_elpd": elpd[best] if best is not None else None,
        "best_program": (programs[best] or rollouts[best].text) if best is not None else None,
        "spearman_logp_logr": spearman_value,
        "learned_log_z": _learned_log_z(backend, env.name, run_dir),
        "is_log_z": is_log_z,
        "is_log_z_se": is_log_z_se,
        "plots": [],
    }
    report["plots"] = _plot(run_dir, log_reward, log_p, ok, report)
    return report


def program_log_probs(
    backend: PolicyBackend,
    thinking: ThinkingMode,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[Sequence[int]],
    log_reward: Sequence[float],
) -> list[float] | None:
    """Per completion, the log-prob training matched to log R(x) - log Z, or None if the
    backend cannot score sequences.

    That is the summed token log p_theta less what the objective adds to log R on top of the
    program's own (the think span's log p_ref for thinking: latent), so Spearman and the
    importance-sampling estimate measure the policy against the target it was trained on.
    """
    scorer = getattr(backend, "sequence_log_probs", None)
    if scorer is None:
        return None
    values = []
    chunk = 16
    for start in range(0, len(completion_ids), chunk):
        part = completion_ids[start : start + chunk]
        prompts = [list(prompt_ids)] * len(part)
        program = torch.tensor(log_reward[start : start + chunk], dtype=torch.float64)
        target = objective_log_reward(backend, thinking, program, prompts, part)
        log_pf = scorer(prompts, part).to(torch.float64)
        values.extend(float(v) for v in log_pf - (target - program))
    return values


def _learned_log_z(backend, prompt_key: str, run_dir: Path) -> float | None:
    """The checkpoint's learned log Z for the prompt (a table in the local policy's module,
    on the Tinker backend itself); else the last log_z in metrics.jsonl."""
    table = getattr(getattr(backend, "module", backend), "log_z", None)
    if table is not None:
        try:
            return float(table([prompt_key]).detach().reshape(-1)[0])
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    path = run_dir / "metrics.jsonl"
    value = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record.get("log_z"), int | float):
                value = float(record["log_z"])
    return value


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _plot(
    run_dir: Path,
    log_reward: Sequence[float],
    log_p: Sequence[float] | None,
    ok: Sequence[bool],
    report: dict,
) -> list[str]:
    from synthstats.eval.plots import plt  # Agg backend chosen there

    title = f"{report['env']} step {report['step']} (T={report['reward_temperature']:g})"
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.hist(log_reward, bins=HISTOGRAM_BINS, color="0.6", edgecolor="0.2")
    axes.set_xlabel("log R")
    axes.set_ylabel("samples")
    axes.set_title(f"reward histogram: {title}")
    figure.tight_layout()
    figure.savefig(run_dir / HISTOGRAM_PLOT, dpi=110)
    plt.close(figure)
    written = [str(run_dir / HISTOGRAM_PLOT)]

    figure, axes = plt.subplots(figsize=(6, 4))
    if log_p is not None:
        good = np.asarray(ok, bool)
        x, y = np.asarray(log_reward), np.asarray(log_p)
        axes.plot(x[good], y[good], "o", ms=4, label="valid")
        axes.plot(x[~good], y[~good], "x", ms=4, color="0.5", label="failed")
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.5, "log p unavailable for this backend", ha="center", va="center")
    axes.set_xlabel("log R")
    axes.set_ylabel("log p_theta (sum over tokens)")
    axes.set_title(f"log p vs log R: {title}")
    figure.tight_layout()
    figure.savefig(run_dir / SCATTER_PLOT, dpi=110)
    plt.close(figure)
    written.append(str(run_dir / SCATTER_PLOT))
    return written


def _slot_report(config, checkpoint: Path, step: int) -> dict:
    """Exact metrics of an enumerable slot policy against its space's target."""
    from synthstats.backends import build_backend
    from synthstats.envs.spaces import get_space
    from synthstats.eval.exact import space_metrics
    from synthstats.eval.target import space_reference_elpd
    from synthstats.judge.shipped import ShippedScoresJudge
    from synthstats.objectives.reward import temperature_at

    space = get_space(config.env.name)
    backend = build_backend(config)
    backend.load(checkpoint / "policy")
    reference_elpd = space_reference_elpd(ShippedScoresJudge(space).shipped)
    temperature = float(temperature_at(step, config.objective.reward))
    metrics = space_metrics(
        backend,
        space,
        reference_elpd=reference_elpd,
        temperature=temperature,
        reward=config.objective.reward,
    )
    return {
        "checkpoint": str(checkpoint),
        "step": step,
        "policy_kind": "slot",
        "env": config.env.name,
        "reward_temperature": temperature,
        "exact": _plain(metrics),
    }


def _plain(metrics) -> dict:
    to_dict = getattr(metrics, "to_dict", None)
    if to_dict is not None:
        return to_dict()
    import dataclasses

    return dataclasses.asdict(metrics)


def summary_text(report: dict) -> str:
    """A few lines for the terminal."""
    if report.get("policy_kind") == "slot":
        lines = [f"{report['env']} slot policy, step {report['step']}: exact metrics"]
        lines += [f"  {key}: {value}" for key, value in report["exact"].items()]
        return "\n".join(lines)

    def number(value, fmt=".3f") -> str:
        return "n/a" if value is None else format(value, fmt)

    errors = ", ".join(f"{k} {v}" for k, v in report["error_kinds"].items()) or "none"
    return "\n".join(
        [
            f"{report['env']} {report['policy_kind']} policy, step {report['step']}, "
            f"{report['samples']} samples at T={report['reward_temperature']:g}",
            f"  valid: {report['valid']}/{report['samples']} "
            f"({report['validity_rate']:.0%}); failures: {errors}",
            f"  unique programs: {report['unique_programs']} "
            f"({report['unique_valid_programs']} valid)",
            f"  best ELPD: {number(report['best_elpd'])}",
            f"  Spearman(log p, log R): {number(report['spearman_logp_logr'])}",
            f"  log Z learned {number(report['learned_log_z'])}, importance-sampled "
            f"{number(report['is_log_z'])} +/- {number(report['is_log_z_se'])}",
        ]
    )
