"""The backend-agnostic GFlowNet loop: collect, score, replay, learn, log, checkpoint.

Scoring overlaps learning: batch k+1 is sampled (from the policy before update k) and
handed to the judge pool before the learner runs step k, so the judge works while the
policy learns. Every checkpoint therefore holds the next batch, already scored: a resumed
run continues with exactly the batch the uninterrupted run would have used, and the two
end bit-identical on a CPU with fixed seeds.

Under `accelerate launch` every rank runs this loop on its share of the batch (sampled with
its own seed and scored by its own judge pool); gradients are averaged in the backend.
The replay buffer is shared: each rank adds every rank's fresh items, so all ranks hold the
same buffer and draw replays from it with their own RNG. Metrics are reduced over ranks and
logged by the main rank; a checkpoint holds every rank's RNG and next batch, so a resume
needs the same number of processes.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from synthstats.backends.base import PolicyBackend, Rollout, TrainBatch
from synthstats.backends.canonical import noncanonical_reason
from synthstats.backends.distributed import Distributed
from synthstats.config import Config
from synthstats.envs.base import Env
from synthstats.errors import PolicyStepError
from synthstats.judge.extract import extract_program
from synthstats.judge.score import Score
from synthstats.objectives import Objective, objective_log_reward, temperature_at
from synthstats.objectives.reward import clamp_hits, tempered_log_reward
from synthstats.replay import ReplayBuffer, ReplayItem, program_hash
from synthstats.train.checkpoint import latest_checkpoint, load_loop_state, save_checkpoint
from synthstats.train.metrics import MetricsLogger

log = logging.getLogger("synthstats.train")


class Judge(Protocol):
    def score_async(self, env: Env, programs: Sequence[str]) -> Future[list[Score]]: ...


@dataclass
class ScoredBatch:
    """Sampled rollouts and their scores: what the learner consumes for one step."""

    rollouts: list[Rollout]
    scores: list[Score]
    sample_seconds: float
    judge_seconds: float


@dataclass
class PendingBatch:
    rollouts: list[Rollout]
    future: Future[list[Score]]
    sample_seconds: float

    def result(self) -> ScoredBatch:
        scores = self.future.result()
        return ScoredBatch(
            self.rollouts, scores, self.sample_seconds, sum(s.seconds for s in scores)
        )


@dataclass
class LoopState:
    """Everything the loop itself must carry across a checkpoint."""

    step: int
    replay: ReplayBuffer
    rng: np.random.Generator
    next_batch: ScoredBatch | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        batch = self.next_batch
        return {
            "step": self.step,
            "replay": self.replay.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "next_batch": None
            if batch is None
            else {
                "rollouts": batch.rollouts,
                "scores": [score.to_dict() for score in batch.scores],
                "sample_seconds": batch.sample_seconds,
                "judge_seconds": batch.judge_seconds,
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], capacity: int) -> LoopState:
        replay = ReplayBuffer(capacity)
        replay.load_state_dict(state["replay"])
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        saved = state["next_batch"]
        batch = None
        if saved is not None:
            batch = ScoredBatch(
                saved["rollouts"],
                [Score.from_dict(fields) for fields in saved["scores"]],
                saved["sample_seconds"],
                saved["judge_seconds"],
            )
        return cls(step=state["step"], replay=replay, rng=rng, next_batch=batch)


class _StopRequest:
    """SIGTERM or Ctrl-C (SIGINT) asks the loop to checkpoint after the current step, then
    stop; a second Ctrl-C stops at once, without the checkpoint."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> _StopRequest:
        for number in self._SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.warning(
            "%s: finishing this step, writing a checkpoint, then stopping%s",
            name,
            " (Ctrl-C again stops at once)" if signum == signal.SIGINT else "",
        )
        self.signal = signum

    def __exit__(self, *exc_info: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)


class Trainer:
    """Wires env, backend, judge, replay and objective; knows none of their insides."""

    def __init__(
        self,
        config: Config,
        env: Env,
        backend: PolicyBackend,
        judge: Judge,
        objective: Objective,
        metrics: MetricsLogger | None,
        run_dir: Path,
        config_yaml: str,
        distributed: Distributed | None = None,
    ):
        """`metrics` may be None on ranks other than the main one, which logs for all."""
        if env.reference_elpd is None:
            raise ValueError(f"env {env.name!r} has no recorded reference ELPD")
        self.config = config
        self.env = env
        self.backend = backend
        self.judge = judge
        self.objective = objective
        self.metrics = metrics
        self.run_dir = run_dir
        self.config_yaml = config_yaml
        self.distributed = distributed or Distributed.from_environment()
        self.local_batch_size = self.distributed.share(config.runner.train.batch_size)
        self.prompt_key = env.name
        self.prompt_ids = backend.render_prompt(env.render_prompt())
        # The signal that ended the last run() early (on every rank), or None.
        self.stopped_by: int | None = None

    def new_state(self, initial_replay: Sequence[ReplayItem] = ()) -> LoopState:
        state = LoopState(
            step=0,
            replay=ReplayBuffer(self.config.runner.train.replay_capacity),
            rng=np.random.default_rng(self.config.seed + self.distributed.rank),
        )
        state.replay.add(initial_replay, self._item_log_reward(0))
        return state

    def run(self, state: LoopState, progress: Callable[[int], None] | None = None) -> LoopState:
        """Train from state.step to the configured number of steps (or until SIGTERM).

        A step that fails with a PolicyStepError (a lost Tinker request, a poisoned client)
        reloads the last checkpoint in-process, as resume= would, up to
        runner.train.max_reloads times; a single process only, as ranks cannot agree on it.
        """
        reloads = 0
        while True:
            try:
                return self._run(state, progress)
            except PolicyStepError as error:
                checkpoint = latest_checkpoint(self.run_dir)
                limit = self.config.runner.train.max_reloads
                if checkpoint is None or reloads >= limit or self.distributed.world_size > 1:
                    raise
                reloads += 1
                log.warning(
                    "step failed (%s); reloading %s, reload %d of %d",
                    error,
                    checkpoint,
                    reloads,
                    limit,
                )
                failed_at = state.step
                state = self.reload(checkpoint)
                if progress is not None:
                    progress(state.step - failed_at)  # the bar steps back to the checkpoint

    def reload(self, checkpoint: Path) -> LoopState:
        """The policy and loop state of `checkpoint`, exactly as resume= restores them."""
        self.backend.load(checkpoint / "policy")
        state = LoopState.from_state_dict(
            self.distributed.rank_loop_state(load_loop_state(checkpoint)),
            self.config.runner.train.replay_capacity,
        )
        if self.metrics is not None:
            self.metrics.rewind(state.step)
        return state

    def _run(self, state: LoopState, progress: Callable[[int], None] | None) -> LoopState:
        train = self.config.runner.train
        pending = self._submit_next(state) if state.next_batch is None else None
        with _StopRequest() as stop:
            while state.step < train.steps:
                waited_from = time.perf_counter()
                current = state.next_batch if pending is None else pending.result()
                wait_seconds = time.perf_counter() - waited_from
                pending = self._submit_next(state)
                metrics = self._learn(state, current)
                metrics["wait_seconds"] = wait_seconds
                metrics = self.distributed.reduce_metrics(metrics)
                state.step += 1
                state.next_batch = None
                if self.metrics is not None:
                    self.metrics.log(metrics)
                    if self.metrics.wants_programs(state.step):
                        self.metrics.log_programs(
                            state.step, self._program_rows(current, state.step - 1)
                        )
                if progress is not None:
                    progress(1)
                final = state.step == train.steps
                # Every rank stops after the same step, whichever got the signal.
                stopping = self.distributed.any_rank(stop.requested)
                if final or stopping or state.step % train.checkpoint_every == 0:
                    state.next_batch = pending.result()
                    pending = None
                    self.checkpoint(state)
                if stopping:
                    self.stopped_by = stop.signal or signal.SIGTERM
                    break
        return state

    def checkpoint(self, state: LoopState) -> Path:
        """Collective with several processes: every rank saves its part, the main rank writes."""
        path = save_checkpoint(
            self.run_dir,
            state.step,
            save_policy=self.backend.save,
            # A backend with remote copies (Tinker) drops them with the local folder.
            release_policy=getattr(self.backend, "release_checkpoint", None),
            loop_state=self.distributed.checkpoint_loop_state(state.state_dict()),
            config_yaml=self.config_yaml,
            is_main=self.distributed.is_main,
            keep=self.config.runner.train.keep_checkpoints,
        )
        if self.distributed.is_main:
            log.info("checkpoint written: %s", path)
        return path

    def _submit_next(self, state: LoopState) -> PendingBatch:
        """Sample the next fresh batch and hand it to the judge without waiting."""
        replayed = self._replay_count(state)
        temperatures = self._sampling_temperatures(state.rng, self.local_batch_size - replayed)
        started = time.perf_counter()
        rollouts = self.backend.sample(self.prompt_key, self.prompt_ids, temperatures)
        sample_seconds = time.perf_counter() - started
        verdicts = [self._verdict_before_judging(rollout) for rollout in rollouts]
        texts = [r.text for r, verdict in zip(rollouts, verdicts, strict=True) if verdict is None]
        scored = self.judge.score_async(self.env, texts)
        return PendingBatch(rollouts, _with_verdicts(verdicts, scored), sample_seconds)

    def _verdict_before_judging(self, rollout: Rollout) -> Score | None:
        """The failure of a rollout the judge need not see (cut at the token limit, or not
        in canonical form: see synthstats.backends.canonical), or None to judge it."""
        if rollout.truncated:
            return Score.failure("no_program", "completion cut at policy.max_new_tokens")
        reason = noncanonical_reason(
            rollout.completion_ids,
            rollout.text,
            thinking=self.config.policy.thinking,
            tokenize_completion=self.backend.tokenize_completion,
        )
        return None if reason is None else Score.failure("noncanonical", reason)

    def _replay_count(self, state: LoopState) -> int:
        wanted = round(self.local_batch_size * self.config.runner.train.replay_fraction)
        return min(wanted, len(state.replay), self.local_batch_size - 1)

    def _sampling_temperatures(self, rng: np.random.Generator, count: int) -> list[float]:
        exploration = self.config.runner.train.exploration
        tempered = rng.random(count) < exploration.tempered_share
        drawn = rng.uniform(exploration.temperature_min, exploration.temperature_max, count)
        return [float(t) if use else 1.0 for use, t in zip(tempered, drawn, strict=True)]

    def _learn(self, state: LoopState, batch: ScoredBatch) -> dict[str, Any]:
        train = self.config.runner.train
        fresh = [
            self._fresh_item(rollout, score, state.step)
            for rollout, score in zip(batch.rollouts, batch.scores, strict=True)
        ]
        log_reward = self._item_log_reward(state.step)
        replayed = state.replay.sample(
            min(self.local_batch_size - len(fresh), len(state.replay)),
            mode=train.replay_sampling,
            log_reward=log_reward,
            generator=state.rng,
            alpha=train.replay_alpha,
        )
        # One buffer shared by all ranks: each adds every rank's fresh items, in rank order.
        # Failures stay out: they never enter the balance loss, and replayed they are not
        # on-policy draws for the failure term either.
        every_rank = self.distributed.all_gather(fresh)
        state.replay.add([item for items in every_rank for item in items if item.ok], log_reward)
        items = fresh + replayed
        rewards = self._log_rewards(items, state.step)
        on_policy = [rollout.temperature == 1.0 for rollout in batch.rollouts]
        started = time.perf_counter()
        result = self.backend.train_step(
            TrainBatch(
                prompt_keys=[item.prompt_key for item in items],
                prompt_ids=[self.prompt_ids for _ in items],
                completion_ids=[item.completion_ids for item in items],
                log_reward=rewards,
                failed=torch.tensor([not item.ok for item in items]),
                on_policy=torch.tensor(on_policy + [False] * len(replayed)),
            ),
            self.objective,
        )
        learner_seconds = time.perf_counter() - started
        fresh_rewards = rewards[: len(fresh)]
        valid = [item.elpd for item in fresh if item.ok]
        drawn = [item for item, policy in zip(fresh, on_policy, strict=True) if policy]
        clamped_low, clamped_high = clamp_hits(
            valid,
            reference_elpd=self.env.reference_elpd,
            step=state.step,
            cfg=self.config.objective.reward,
        )
        tokens = sum(len(rollout.completion_ids) for rollout in batch.rollouts)
        return {
            "step": state.step,
            **result,
            "temperature": temperature_at(state.step, self.config.objective.reward),
            "reward_mean": float(fresh_rewards.mean()),
            "reward_max": float(fresh_rewards.max()),
            "batch_reward_max": float(rewards.max()),
            "valid_rate": len(valid) / len(fresh),
            # p(valid) of the policy itself: the sampler's efficiency under p(x | valid).
            "sampler_efficiency": sum(item.ok for item in drawn) / len(drawn) if drawn else None,
            "noncanonical_rate": sum(i.error_kind == "noncanonical" for i in fresh) / len(fresh),
            # Share of the scored fresh programs whose log R the clamp cut, at low / high.
            "clamped_low": clamped_low / len(valid) if valid else None,
            "clamped_high": clamped_high / len(valid) if valid else None,
            "elpd_max": max(valid) if valid else None,
            "unique_programs": len({item.program_hash for item in fresh}),
            "replayed": len(replayed),
            "replay_size": len(state.replay),
            "judge_seconds": batch.judge_seconds,
            "learner_seconds": learner_seconds,
            "sample_seconds": batch.sample_seconds,
            "tokens_per_second": tokens / batch.sample_seconds if batch.sample_seconds else None,
        }

    def _program_rows(self, batch: ScoredBatch, step: int) -> list[dict[str, Any]]:
        """This rank's fresh samples of a step with their scores, for a table of programs."""
        log_rewards = tempered_log_reward(
            [score.elpd_loo if score.ok else math.nan for score in batch.scores],
            [score.ok for score in batch.scores],
            reference_elpd=self.env.reference_elpd,
            step=step,
            cfg=self.config.objective.reward,
        )
        return [
            {
                "program": extract_program(rollout.text) or rollout.text,
                "ok": score.ok,
                "error_kind": score.error_kind,
                "elpd": score.elpd_loo if score.ok else None,
                "log_reward": float(log_reward),
            }
            for rollout, score, log_reward in zip(
                batch.rollouts, batch.scores, log_rewards, strict=True
            )
        ]

    def _fresh_item(self, rollout: Rollout, score: Score, step: int) -> ReplayItem:
        program = extract_program(rollout.text)
        return ReplayItem(
            prompt_key=rollout.prompt_key,
            completion_ids=tuple(rollout.completion_ids),
            program_hash=program_hash(program if program is not None else rollout.text),
            elpd=score.elpd_loo if score.ok else None,
            ok=score.ok,
            error_kind=score.error_kind,
            step_added=step,
            source="fresh",
        )

    def _log_rewards(self, items: Sequence[ReplayItem], step: int) -> torch.Tensor:
        return objective_log_reward(
            self.backend,
            self.config.policy.thinking,
            self._program_log_rewards(items, step),
            [self.prompt_ids for _ in items],
            [item.completion_ids for item in items],
        )

    def _program_log_rewards(self, items: Sequence[ReplayItem], step: int) -> torch.Tensor:
        rewards = tempered_log_reward(
            [item.elpd if item.ok else math.nan for item in items],
            [item.ok for item in items],
            reference_elpd=self.env.reference_elpd,
            step=step,
            cfg=self.config.objective.reward,
        )
        low, high = self.config.sft_warmstart.log_clamp
        from_demonstration = torch.tensor([item.source == "sft" for item in items])
        return torch.where(from_demonstration, rewards.clamp(low, high), rewards)

    def _item_log_reward(self, step: int) -> Callable[[ReplayItem], float]:
        """The program's log R at this step's temperature, for replay priority and eviction."""
        return lambda item: float(self._program_log_rewards([item], step)[0])


def _with_verdicts(verdicts: Sequence[Score | None], scored: Future) -> Future:
    """Scores for every rollout: its verdict before judging, or the judge's in order."""
    combined: Future[list[Score]] = Future()

    def merge(done: Future[list[Score]]) -> None:
        error = done.exception()
        if error is not None:
            combined.set_exception(error)
            return
        judged = iter(done.result())
        combined.set_result([next(judged) if v is None else v for v in verdicts])

    scored.add_done_callback(merge)
    return combined
