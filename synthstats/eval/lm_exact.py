"""The exact check on the language-model path: a tiny Qwen3, the real tokenizer, the real loop.

The slot job (validation.py) proves objective, loop and replay on a policy that cannot go
wrong the ways a language model can (other spellings of a program, failures, dropout). This
job trains a tiny random Qwen3 over the real Qwen3 tokenizer and chat template, in full
(LocalBackend(train_base=True): with LoRA alone a tiny random model's logits stay within
about +-1), through the local backend's sampling, scoring and update code and the
backend-agnostic loop, on a space's target with failure programs added:

- valid programs: the space's, paid exp((elpd - best) / T) from its shipped scores;
- failure programs: `failure_programs(space)` (synthstats/envs/spaces/failures.py, shared
  with the slot job), edits of its first program that the real judge's gate refuses
  (checked when the target is built); any other canonical completion fails too, and a
  noncanonical one fails in the loop before any judge sees it.

p_theta of each program is exact: teacher forcing its canonical completion (stop token
included) from the env's prompt. Everything else the policy can emit is failure mass. The
target is p*(x) = p(x | valid) = R(x) / sum R (synthstats/objectives/failures.py), so the
report gives, after the supervised phase (uniform over every program of the space, failure
programs included) and after the GFlowNet phase: TV(p*, p_theta(. | valid)), p(valid), the
mass on the declared failure programs, KL(p* || p_theta(. | valid)), Spearman, and the log Z
error against the derivation, |log Z - (log sum R - log p(valid))|, with the slot policy's
numbers on the same target beside them (the slot job runs first, into OUT/slot, unless
--slot-report names a slot run's report.json). OUT also gets evaluation.jsonl (the metrics
every steps/10 GFlowNet steps), programs.png, curves.png and the loop's metrics.jsonl.

    python -m synthstats.eval.lm_exact --env surgical --out runs/lm-exact
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp
from tqdm.auto import tqdm

from synthstats.backends.canonical import canonical_completion
from synthstats.backends.local import LocalBackend
from synthstats.backends.mock_model import cached_model_folder, write_mock_model
from synthstats.backends.slot import ARCHITECTURE as SLOT_ARCHITECTURE
from synthstats.config import Config, to_yaml
from synthstats.envs import get_env
from synthstats.envs.base import Env
from synthstats.envs.spaces import get_space
from synthstats.envs.spaces.failures import failure_programs
from synthstats.envs.spaces.grammar import ProgramSpace
from synthstats.eval.metrics import exact_metrics_given_valid, target_probabilities
from synthstats.eval.plots import plot_curves, plot_programs
from synthstats.eval.target import space_log_rewards, space_reference_elpd
from synthstats.eval.tracking import finite
from synthstats.judge.score import Score
from synthstats.judge.scoring import prepare
from synthstats.judge.space_scores import load_scores
from synthstats.objectives import build_objective
from synthstats.train.loop import Trainer
from synthstats.train.metrics import MetricsLogger
from synthstats.train.sft import supervised_phase

log = logging.getLogger("synthstats.eval")

# What this path must reach (issue 18): TV(p*, p_theta(. | valid)) and p(valid).
LM_TV_GOAL = 0.10
LM_P_VALID_GOAL = 0.95
# Small but able to memorise a few dozen programs; the LM head over 151k tokens dominates.
# The slot policy's transformer, over the real Qwen3 tokenizer's vocabulary and chat prompts.
ARCHITECTURE = {
    **SLOT_ARCHITECTURE,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class LMTarget:
    """Canonical completions (thinking off) of the valid programs with their log R, and of
    the declared failure programs with the judge's refusal of each."""

    log_reward: dict[str, float]
    failures: dict[str, Score]
    scores: dict[str, Score]

    @property
    def completions(self) -> list[str]:
        return [*self.log_reward, *self.failures]

    @property
    def probabilities(self) -> np.ndarray:
        """p*(x) = R(x) / sum R over the valid programs, in `log_reward` order."""
        return target_probabilities(np.array(list(self.log_reward.values())))

    def judge(self) -> TargetJudge:
        return TargetJudge(self)


class TargetJudge:
    """The loop's judge for this job: shipped scores, the gate's refusals, and a failure
    for any other program; no PyMC runs."""

    def __init__(self, target: LMTarget) -> None:
        self.known = {**target.scores, **target.failures}

    def score_async(self, env: Env, programs: Sequence[str]) -> Future[list[Score]]:
        outside = Score.failure("runtime", "not a program of the space (no shipped score)")
        future: Future[list[Score]] = Future()
        future.set_result([self.known.get(text, outside) for text in programs])
        return future


def space_target(space: ProgramSpace, *, temperature: float | None = None) -> LMTarget:
    """The space's valid programs (reference: its best ELPD, so log R <= 0) and failures."""
    shipped = load_scores(space)
    log_reward = space_log_rewards(
        space,
        shipped,
        reference_elpd=space_reference_elpd(shipped),
        temperature=temperature or space.reward_temperature,
    )
    scores = dict(zip(space.completions, shipped.scores, strict=True))
    return build_target(log_reward, scores, failure_programs(space))


def build_target(
    log_reward: Mapping[str, float], scores: Mapping[str, Score], failures: Sequence[str]
) -> LMTarget:
    """Checks every completion is canonical and every failure is refused by the gate."""
    refused = {}
    for text in failures:
        verdict = prepare(text)
        if not isinstance(verdict, Score) or verdict.ok:
            raise ValueError(f"a declared failure program passes the judge's gate:\n{text}")
        refused[text] = verdict
    for text in [*log_reward, *failures]:
        if canonical_completion(text[len("```python\n") : -len("\n```")], "off") != text:
            raise ValueError(f"not a canonical completion:\n{text}")
    return LMTarget(dict(log_reward), refused, dict(scores))


@torch.no_grad()
def completion_log_probs(
    backend: LocalBackend, prompt_ids: Sequence[int], target: LMTarget
) -> dict[str, float]:
    """Exact log p_theta of every valid and declared failure program, teacher forced."""
    texts = target.completions
    ids = [backend.tokenize_completion(text) for text in texts]
    log_p = []
    for start in range(0, len(ids), 8):
        chunk = ids[start : start + 8]
        log_p += backend.sequence_log_probs([prompt_ids] * len(chunk), chunk).tolist()
    return dict(zip(texts, log_p, strict=True))


def measure(backend: LocalBackend, prompt_ids: Sequence[int], target: LMTarget) -> dict[str, Any]:
    """Exact metrics of p_theta(. | valid) against p*, p(valid) and the failure masses."""
    by_text = completion_log_probs(backend, prompt_ids, target)
    declared = float(sum(math.exp(by_text[text]) for text in target.failures))
    learned_log_z = float(backend.module.log_z([backend_key(backend)]).item())
    metrics = exact_metrics_given_valid(target.log_reward, by_text, learned_log_z)
    p_valid = metrics.p_valid
    # in logs: p(valid) of an unwritable space underflows to 0 (1e-126 has been seen)
    log_p_valid = float(logsumexp([by_text[text] for text in target.log_reward]))
    return {
        "tv": metrics.tv,
        "kl": metrics.kl,
        "spearman": metrics.spearman,
        "p_valid": p_valid,
        "failure_mass_declared": declared,
        "failure_mass_other": max(0.0, 1.0 - p_valid - declared),
        "log_z": learned_log_z,
        "log_z_expected": metrics.log_partition - log_p_valid,
        "logz_error": metrics.logz_error,
        "log_partition": metrics.log_partition,
        "modes_covered": metrics.modes_covered,
        "p_given_valid": {
            text: math.exp(by_text[text] - log_p_valid) for text in target.log_reward
        },
    }


class PhaseTracker:
    """The GFlowNet phase's progress hook: advances the bar and measures every `interval`
    steps (a teacher-forced pass over the target's programs), for curves.png."""

    def __init__(
        self,
        backend: LocalBackend,
        prompt_ids: Sequence[int],
        target: LMTarget,
        *,
        interval: int,
        advance: Callable[[int], Any],
    ) -> None:
        self.backend, self.prompt_ids, self.target = backend, prompt_ids, target
        self.interval, self.advance = interval, advance
        self.step = 0
        self.history: list[dict[str, Any]] = []

    def record(self) -> None:
        row = measure(self.backend, self.prompt_ids, self.target)
        self.history.append({"step": self.step, **_without_programs(row)})

    def __call__(self, steps: int) -> None:
        self.advance(steps)
        self.step += steps
        if self.step % self.interval == 0:
            self.record()


def _without_programs(row: Mapping[str, Any]) -> dict[str, Any]:
    """A phase's metrics for JSON: no per-program table, null for an infinite KL."""
    return finite({key: value for key, value in row.items() if key != "p_given_valid"})


def backend_key(backend: LocalBackend) -> str:
    return backend.module.log_z.index.keys[0]


def job_config(
    env_name: str, *, steps: int, sft_steps: int, max_new_tokens: int, batch_size: int = 8
) -> Config:
    """The loop's config for this job: TB with a learned log Z, on-policy mostly."""
    config = Config()
    config.env.name = env_name
    config.policy.kind = "mock"
    config.policy.max_new_tokens = max_new_tokens
    config.objective.loss = "tb"
    config.objective.log_z_lr = 0.05
    train = config.runner.train
    train.steps = steps
    train.learning_rate = 1e-3
    train.replay_fraction = 0.25
    train.checkpoint_every = max(steps, 1)
    train.exploration.tempered_share = 0.0
    config.sft_warmstart.nll_steps = sft_steps
    config.sft_warmstart.show_progress = False
    config.runner.train.batch_size = batch_size
    config.logging.backend = "jsonl"
    return config


def tiny_model_folder(architecture: Mapping[str, Any] = ARCHITECTURE) -> Path:
    """A seeded tiny Qwen3 of this architecture with the real tokenizer, cached."""
    spec = dict(architecture)
    return cached_model_folder(
        "lm-exact", "qwen3", [spec, 0], lambda folder: write_mock_model(folder, spec)
    )


def run_lm_exact(
    run_dir: Path,
    env: Env,
    target: LMTarget,
    *,
    steps: int,
    sft_steps: int,
    architecture: Mapping[str, Any] = ARCHITECTURE,
    sft_learning_rate: float = 0.1,
    batch_size: int = 8,
    learning_rate: float = 0.01,
    reward_temperature: float = 1.0,
    seed: int = 0,
    show_progress: bool = True,
    evaluations: int = 10,
    slot: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The supervised phase, then the GFlowNet phase (measured `evaluations` times); writes
    report.json (with `slot`, the slot policy's numbers on the same target, beside), and
    programs.png and curves.png in run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tokens = max(len(text) for text in target.completions)  # characters >= tokens
    config = job_config(
        env.name, steps=steps, sft_steps=sft_steps, max_new_tokens=tokens, batch_size=batch_size
    )
    config.seed = seed
    # The loop's log R must be the target's: same temperature, env.reference_elpd as zero.
    config.objective.reward.temperature = reward_temperature
    config.output_dir = str(run_dir)
    backend = LocalBackend(
        tiny_model_folder(architecture),
        policy=config.policy,
        train=config.runner.train,
        objective=config.objective,
        prompt_keys=[env.name],
        seed=seed,
        train_base=True,
    )
    longest = max(len(backend.tokenize_completion(text)) for text in target.completions)
    config.policy.max_new_tokens = backend.policy.max_new_tokens = longest + 8
    prompt_ids = backend.render_prompt(env.render_prompt())
    metrics = MetricsLogger(run_dir, config.logging)
    report: dict[str, Any] = {
        "env": env.name,
        "valid_programs": len(target.log_reward),
        "failure_programs": len(target.failures),
        "architecture": dict(architecture),
        "prompt_tokens": len(prompt_ids),
        "longest_completion_tokens": longest,
        "supervised_steps": sft_steps,
        "gflownet_steps": steps,
        "batch_size": config.runner.train.batch_size,
    }
    try:
        started = time.perf_counter()
        _set_policy_learning_rate(backend, sft_learning_rate)
        every = [backend.tokenize_completion(text) for text in target.completions]
        losses = supervised_phase(
            config, backend, every, prompt_ids, metrics, show_progress=show_progress
        )
        report["supervised_seconds"] = time.perf_counter() - started
        report["supervised_final_nll"] = losses[-1] if losses else None
        supervised = measure(backend, prompt_ids, target)
        report["after_supervised"] = _without_programs(supervised)
        _set_policy_learning_rate(backend, learning_rate)
        log.info("after the supervised phase: %s", report["after_supervised"])
        trainer = Trainer(
            config,
            env,
            backend,
            target.judge(),
            build_objective(config.objective),
            metrics,
            run_dir,
            to_yaml(config),
        )
        started = time.perf_counter()
        with tqdm(total=steps, desc="GFlowNet phase", disable=not show_progress) as bar:
            tracker = PhaseTracker(
                backend,
                prompt_ids,
                target,
                interval=max(1, steps // max(evaluations, 1)),
                advance=bar.update,
            )
            tracker.history.append({"step": 0, **report["after_supervised"]})
            trainer.run(trainer.new_state(), progress=tracker)
        report["gflownet_seconds"] = time.perf_counter() - started
        final = measure(backend, prompt_ids, target)
        report["after_gflownet"] = _without_programs(final)
        log.info("after the GFlowNet phase: %s", report["after_gflownet"])
    finally:
        metrics.close()
    after = report["after_gflownet"]
    report["goals"] = {"tv": LM_TV_GOAL, "p_valid": LM_P_VALID_GOAL}
    report["goals_met"] = bool(after["tv"] <= LM_TV_GOAL and after["p_valid"] >= LM_P_VALID_GOAL)
    report["slot_policy"] = dict(slot) if slot is not None else None
    report["per_program"] = [
        {
            "program": index,
            "log_reward": log_reward,
            "target": float(p_target),
            "after_supervised": supervised["p_given_valid"][text],
            "after_gflownet": final["p_given_valid"][text],
        }
        for index, ((text, log_reward), p_target) in enumerate(
            zip(target.log_reward.items(), target.probabilities, strict=True)
        )
    ]
    (run_dir / "report.json").write_text(json.dumps(finite(report), indent=2) + "\n")
    (run_dir / "evaluation.jsonl").write_text(
        "".join(json.dumps(finite(row)) + "\n" for row in tracker.history)
    )
    _plot(run_dir, env.name, target, report, tracker.history)
    return report


def _plot(
    run_dir: Path,
    env_name: str,
    target: LMTarget,
    report: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
) -> None:
    """programs.png: p*(x) against p_theta(x | valid) after each phase; curves.png: TV and
    log Z + log p(valid) (which the derivation puts at log sum R) over the GFlowNet phase."""
    rows = report["per_program"]
    plot_programs(
        run_dir / "programs.png",
        [f"#{row['program']} (log R {row['log_reward']:.2f})" for row in rows],
        target.probabilities,
        {
            "after supervised": np.array([row["after_supervised"] for row in rows]),
            "after GFlowNet": np.array([row["after_gflownet"] for row in rows]),
        },
        title=f"{env_name}, LM path: p_theta(x | valid) against p*",
    )
    plot_curves(
        run_dir / "curves.png",
        {
            "GFlowNet phase": [
                {
                    "step": row["step"],
                    "tv": row["tv"],
                    "log_z": row["log_z"] - row["log_z_expected"] + row["log_partition"],
                }
                for row in history
            ]
        },
        log_partition=float(history[-1]["log_partition"]),
        tv_goal=LM_TV_GOAL,
        title=f"{env_name}, LM path: TV(p*, p_theta(. | valid)) and log Z",
        log_z_label="log Z + log p(valid)",
    )


def _set_policy_learning_rate(backend: LocalBackend, learning_rate: float) -> None:
    """The supervised phase memorises a few dozen programs: it takes a larger step."""
    for group in backend.optimizer.param_groups:
        if group["name"] == "lora":
            group["lr"] = learning_rate


def slot_numbers(report: Mapping[str, Any]) -> dict[str, Any]:
    """The slot policy's numbers on the same space's target, from its job's report.json."""
    keys = ("tv_initial", "tv", "p_valid_initial", "p_valid", "kl", "spearman", "logz_error")
    return {
        "env": report["env"],
        "programs": report["programs"],
        "failure_programs": report["failure_programs"],
        "steps": report["steps"],
        "seconds": report["seconds"],
        **{key: report[key] for key in keys},
    }


def run_slot_job(env_name: str, run_dir: Path, seed: int) -> Path:
    """The slot validation job on the same env (its space, temperature and reference ELPD
    give the same p*), for comparison; returns its report.json."""
    from synthstats.config import resolve
    from synthstats.eval.validation import run_validation

    run_validation(
        resolve([f"env={env_name}", "policy=slot", f"seed={seed}", f"output_dir={run_dir}"]),
        show_progress=False,
    )
    return run_dir / "report.json"


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the job on an env's program space and prints the two phases' metrics beside the
    slot policy's on the same target."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--env", default="surgical")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/lm-exact"))
    parser.add_argument(
        "--slot-report",
        type=Path,
        default=None,
        help="report.json of a slot run on the same env (default: run the slot job, a few "
        "minutes on a CPU, into OUT/slot first)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    slot_report = args.slot_report or run_slot_job(args.env, args.out / "slot", args.seed)
    slot = slot_numbers(json.loads(slot_report.read_text()))
    if slot["env"] != args.env:
        raise SystemExit(f"--slot-report {slot_report} is for env {slot['env']}, not {args.env}")
    space = get_space(args.env)
    shipped = load_scores(space)
    env = dataclasses.replace(get_env(args.env), reference_elpd=space_reference_elpd(shipped))
    report = run_lm_exact(
        args.out,
        env,
        space_target(space),
        steps=args.steps,
        sft_steps=args.sft_steps,
        reward_temperature=space.reward_temperature,
        seed=args.seed,
        slot=slot,
    )
    for phase in ("after_supervised", "after_gflownet"):
        print(phase, json.dumps(report[phase]))
    print("slot policy", json.dumps(slot))
    print(f"report, plots and metrics: {args.out}")


if __name__ == "__main__":
    main()
