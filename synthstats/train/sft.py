"""SFT warm-start: demonstrations enter the replay buffer before the first step.

The policy learns from good programs before it can write any. A demonstration is stored
like a sample: the token ids of its program's canonical completion (see
synthstats.backends.canonical: one ```python block, the tokenizer's encoding, the stop
token) and its ELPD, never a reward. Its trajectory starts from the env's prompt, whatever
prompt the line carries. With `policy.thinking: off` a `<think>` span is removed from the
completion (a policy that cannot think never wrote one); with `latent` it stays as the
latent unless `strip_thinking` is set (then the span is Qwen3's empty one). A demonstration
longer than policy.max_new_tokens could never be sampled: it is refused with its file and
line (or skipped and counted with skip_invalid).

`sft_warmstart.nll_steps` > 0 adds a supervised phase before the GFlowNet phase: plain
likelihood on the demonstrations' canonical completions, for a policy that cannot yet write
any program (its loss is logged per step as `nll_loss`, phase `sft`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from synthstats.backends.base import PolicyBackend
from synthstats.backends.canonical import canonical_completion
from synthstats.config import Config
from synthstats.envs import get_env
from synthstats.envs.base import Env
from synthstats.errors import UserFacingError
from synthstats.judge.extract import extract_program
from synthstats.objectives import ThinkingMode
from synthstats.objectives.reward import clamp_hits
from synthstats.replay import ReplayItem, program_hash
from synthstats.train.metrics import MetricsLogger

log = logging.getLogger("synthstats.sft")

BUILTIN_PREFIX = "builtin:"
_THINK_SPAN = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_THINK_CONTENT = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)


class DemonstrationError(UserFacingError, ValueError):
    """A bad demonstration file: the message names the file and line."""


@dataclass(frozen=True)
class Demonstration:
    source: str
    line: int
    completion: str
    program: str
    env: str | None
    elpd: float | None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def resolve_data_path(data_path: str) -> Path:
    """A path, or builtin:ENV for the demonstrations an env ships."""
    if data_path.startswith(BUILTIN_PREFIX):
        env = get_env(data_path[len(BUILTIN_PREFIX) :])
        if env.demonstrations_path is None:
            raise DemonstrationError(f"{data_path}: env {env.name!r} ships no demonstrations")
        return Path(env.demonstrations_path)
    path = Path(data_path)
    if not path.is_file():
        raise DemonstrationError(f"sft_warmstart.data_path={data_path}: no such file")
    return path


def strip_think(completion: str) -> str:
    return _THINK_SPAN.sub("", completion, count=1)


def read_demonstrations(
    path: Path, *, strip_thinking: bool, skip_invalid: bool
) -> list[Demonstration]:
    """Parse and check every line before any training starts."""
    demonstrations, skipped = [], []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            demonstrations.append(_parse_line(raw, str(path), number, strip_thinking))
        except DemonstrationError as error:
            if not skip_invalid:
                raise
            skipped.append(str(error))
    if skipped:
        log.warning(
            "skipped %d invalid demonstration lines:\n  %s", len(skipped), "\n  ".join(skipped)
        )
    if not demonstrations:
        raise DemonstrationError(f"{path}: no usable demonstrations")
    return demonstrations


def _parse_line(raw: str, source: str, number: int, strip_thinking: bool) -> Demonstration:
    where = f"{source}:{number}"
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DemonstrationError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise DemonstrationError(f"{where}: expected a JSON object, got {type(record).__name__}")
    completion = record.get("completion")
    if not isinstance(completion, str) or not completion.strip():
        raise DemonstrationError(f"{where}: no 'completion' text")
    _check_prompt(record.get("prompt"), where)
    if strip_thinking:
        completion = strip_think(completion)
    program = extract_program(completion)
    if program is None:
        raise DemonstrationError(f"{where}: the completion holds no closed ```python block")
    elpd = record.get("elpd")
    if elpd is not None and not isinstance(elpd, int | float):
        raise DemonstrationError(f"{where}: 'elpd' must be a number, got {elpd!r}")
    env = record.get("env")
    return Demonstration(source, number, completion, program, env, elpd)


def _check_prompt(prompt: Any, where: str) -> None:
    if prompt is None or isinstance(prompt, str):
        return
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt
    ):
        return
    raise DemonstrationError(
        f"{where}: 'prompt' must be a string or a list of {{role, content}} messages"
    )


def _select(
    demonstrations: Sequence[Demonstration], env: Env, config: Config
) -> list[Demonstration]:
    sft = config.sft_warmstart
    chosen = [d for d in demonstrations if d.env in (None, env.name)]
    if len(chosen) < len(demonstrations):
        log.info(
            "%d demonstrations are for other envs and were left out",
            len(demonstrations) - len(chosen),
        )
    if sft.dedupe:
        seen: set[str] = set()
        unique = []
        for demonstration in chosen:
            key = program_hash(demonstration.program)
            if key not in seen:
                seen.add(key)
                unique.append(demonstration)
        if len(unique) < len(chosen):
            log.info(
                "dropped %d repeated programs (sft_warmstart.dedupe)", len(chosen) - len(unique)
            )
        chosen = unique
    if sft.max_examples is not None:
        chosen = chosen[: sft.max_examples]
    if not chosen:
        raise DemonstrationError(f"{sft.data_path}: no demonstrations for env {env.name!r}")
    return chosen


def warmstart_items(
    config: Config, env: Env, backend: PolicyBackend, judge: Any, *, show_progress: bool = True
) -> list[ReplayItem]:
    """Replay items from the configured demonstrations (empty when warm-start is off)."""
    sft = config.sft_warmstart
    if not sft.enabled:
        return []
    strip = sft.strip_thinking or config.policy.thinking == "off"
    path = resolve_data_path(sft.data_path)
    demonstrations = _select(
        read_demonstrations(path, strip_thinking=strip, skip_invalid=sft.skip_invalid), env, config
    )
    demonstrations, ids = _canonical_ids(demonstrations, backend, config)
    elpds = _elpds(demonstrations, env, judge, config, show_progress)
    items = []
    for demonstration, completion_ids, (ok, elpd, error_kind) in zip(
        demonstrations, ids, elpds, strict=True
    ):
        if not ok:
            log.warning("demonstration %s failed to score: %s", demonstration.where, error_kind)
        items.append(
            ReplayItem(
                prompt_key=env.name,
                completion_ids=tuple(completion_ids),
                program_hash=program_hash(demonstration.program),
                elpd=elpd if ok else None,
                ok=ok,
                error_kind=None if ok else error_kind,
                step_added=0,
                source="sft",
                judged=sft.compute_rewards,
            )
        )
    _warn_of_clamped(demonstrations, elpds, env, config)
    log.info("warm-start: %d demonstrations from %s in the replay buffer", len(items), path)
    return items


def _warn_of_clamped(
    demonstrations: Sequence[Demonstration],
    elpds: Sequence[tuple[bool, float | None, str | None]],
    env: Env,
    config: Config,
) -> None:
    """The shipped demonstrations carry no ELPD, so whether the upper clamp flattens one is
    known only once a run scores it (or reads its file's number): say so, with the lines."""
    reward = config.objective.reward
    flattened = [
        demonstration.where
        for demonstration, (ok, elpd, _) in zip(demonstrations, elpds, strict=True)
        if ok and clamp_hits([elpd], reference_elpd=env.reference_elpd, step=0, cfg=reward)[1]
    ]
    if flattened:
        log.warning(
            "%d demonstrations reach the upper clamp objective.reward.high=%g (ELPD at least "
            "%g nats above the reference at T=%g), so they share one reward: %s; raise "
            "objective.reward.high or objective.reward.temperature",
            len(flattened),
            reward.high,
            reward.high * reward.temperature,
            reward.temperature,
            ", ".join(flattened),
        )


def canonical_demonstration(demonstration: Demonstration, thinking: ThinkingMode) -> str:
    """The canonical completion of a demonstration's program (its think span kept as the
    latent under thinking: latent, unless it was stripped)."""
    think = _THINK_CONTENT.match(demonstration.completion)
    return canonical_completion(
        demonstration.program, thinking, think.group(1) if think is not None else None
    )


def _canonical_ids(
    demonstrations: Sequence[Demonstration], backend: PolicyBackend, config: Config
) -> tuple[list[Demonstration], list[list[int]]]:
    """Each demonstration in canonical form with its ids; a too-long one is refused with its
    file and line, or skipped and counted under skip_invalid."""
    limit = config.policy.max_new_tokens
    kept, ids, skipped = [], [], []
    for demonstration in demonstrations:
        try:
            text = canonical_demonstration(demonstration, config.policy.thinking)
        except ValueError as error:
            problem = f"{demonstration.where}: {error}"
        else:
            tokens = backend.tokenize_completion(text)
            if len(tokens) <= limit:
                kept.append(dataclasses.replace(demonstration, completion=text))
                ids.append(tokens)
                continue
            problem = (
                f"{demonstration.where}: {len(tokens)} tokens in canonical form, more than "
                f"policy.max_new_tokens={limit} (the policy could never sample it); raise the "
                "limit, shorten the demonstration or set sft_warmstart.skip_invalid=true"
            )
        if not config.sft_warmstart.skip_invalid:
            raise DemonstrationError(problem)
        skipped.append(problem)
    if skipped:
        log.warning("skipped %d demonstrations:\n  %s", len(skipped), "\n  ".join(skipped))
    if not kept:
        raise DemonstrationError(f"{config.sft_warmstart.data_path}: no usable demonstrations")
    return kept, ids


def supervised_phase(
    config: Config,
    backend: Any,
    completions: Sequence[Sequence[int]],
    prompt_ids: Sequence[int],
    metrics: MetricsLogger | None,
    *,
    show_progress: bool = True,
) -> list[float]:
    """sft_warmstart.nll_steps steps of plain likelihood on these completion ids (the
    demonstrations' canonical completions), in batches of runner.train.batch_size drawn in
    a seeded shuffled order; returns each step's loss. Needs a backend's `supervised_step`."""
    steps = config.sft_warmstart.nll_steps
    if steps == 0:
        return []
    if not hasattr(backend, "supervised_step"):
        raise DemonstrationError(
            f"sft_warmstart.nll_steps={steps}: the {type(backend).__name__} has no supervised "
            "phase; set sft_warmstart.nll_steps=0"
        )
    rows = list(completions)
    size = min(config.runner.train.batch_size, len(rows))
    rng = np.random.default_rng(config.seed)
    order: list[int] = []
    losses = []
    with tqdm(total=steps, desc="supervised phase", unit="step", disable=not show_progress) as bar:
        for step in range(steps):
            if len(order) < size:
                order += rng.permutation(len(rows)).tolist()
            chosen, order = order[:size], order[size:]
            loss = backend.supervised_step([prompt_ids] * size, [rows[i] for i in chosen])
            losses.append(loss)
            if metrics is not None:
                metrics.log({"step": step, "phase": "sft", "nll_loss": loss})
            bar.update(1)
            bar.set_postfix(nll=f"{loss:.3g}")
    return losses


def _elpds(
    demonstrations: Sequence[Demonstration],
    env: Env,
    judge: Any,
    config: Config,
    show_progress: bool,
) -> list[tuple[bool, float | None, str | None]]:
    sft = config.sft_warmstart
    if not sft.compute_rewards:
        results = []
        for demonstration in demonstrations:
            elpd = demonstration.elpd if demonstration.elpd is not None else sft.default_elpd
            if elpd is None:
                raise DemonstrationError(
                    f"{demonstration.where}: no 'elpd'; set sft_warmstart.compute_rewards=true "
                    "to score it, or sft_warmstart.default_elpd"
                )
            results.append((True, float(elpd), None))
        return results
    futures = [judge.score_async(env, [d.completion]) for d in demonstrations]
    results = []
    with tqdm(
        total=len(futures),
        desc="scoring demonstrations",
        disable=not (show_progress and sft.show_progress),
    ) as bar:
        for future in futures:
            (score,) = future.result()
            results.append((score.ok, score.elpd_loo, score.error_kind))
            bar.update(1)
    return results
