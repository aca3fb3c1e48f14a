"""The judge's ELPD of every program in a space, scored once and shipped as JSON.

Scoring a space costs minutes (a new model structure compiles for seconds), so the ELPDs
are shipped with the spaces, in `synthstats/envs/spaces/scores/ENV.json`, with the judge
budget, the env's data hash and the library versions that produced them; the exact target
is then computable offline in milliseconds. Each program row carries a digest of its
completion text: edit a template and `load_scores` refuses the stale file until the space
is re-scored with

    python -m synthstats.maintain score-space ENV [--judge default]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthstats.envs.spaces import SCORES_DIR
from synthstats.envs.spaces.grammar import Path as ProgramPath
from synthstats.envs.spaces.grammar import ProgramSpace
from synthstats.judge.score import Score

if TYPE_CHECKING:
    from synthstats.config import JudgeConfig
    from synthstats.envs.base import Env

VERSIONED_PACKAGES = ("pymc", "pytensor", "arviz", "numpy")
# The Score fields kept per program.
SCORE_FIELDS = (
    *("ok", "error_kind", "message", "elpd_loo", "se", "p_loo", "mcse_elpd"),
    *("pareto_k_max", "divergences", "seconds"),
)


@dataclass(frozen=True)
class SpaceScores:
    """Shipped judge scores of one space, aligned with `space.paths()`."""

    env_name: str
    data_hash: str
    judge_budget: dict[str, Any]
    versions: dict[str, str]
    ok: np.ndarray  # [N] bool
    elpd: np.ndarray  # [N] float64, nan where not ok
    mcse: np.ndarray  # [N] float64, the judge's rough MCSE of each ELPD (nan if unknown)
    seconds: np.ndarray  # [N] judge wall-clock seconds per program
    scores: tuple[Score, ...]  # [N] the stored Scores, marked cached


def scores_path(env_name: str) -> Path:
    return SCORES_DIR / f"{env_name}.json"


def program_digest(completion: str) -> str:
    """A short hash of a program's completion text, so stale rows are detected."""
    return hashlib.sha256(completion.encode()).hexdigest()[:16]


def load_scores(space: ProgramSpace, path: Path | None = None) -> SpaceScores:
    """The shipped scores of a space; ValueError if they do not match its programs."""
    path = path or scores_path(space.env_name)
    stored = json.loads(Path(path).read_text())
    rows = stored["programs"]
    expected = [program_digest(text) for text in space.completions]
    if [row["digest"] for row in rows] != expected:
        raise ValueError(
            f"{path} does not match the current {space.env_name} space (programs changed): "
            f"re-score with `python -m synthstats.maintain score-space {space.env_name}`"
        )

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if row[name] is None else row[name] for row in rows], float)

    return SpaceScores(
        env_name=stored["env"],
        data_hash=stored["data_hash"],
        judge_budget=stored["judge"],
        versions=stored["versions"],
        ok=np.array([row["ok"] for row in rows], dtype=bool),
        elpd=column("elpd_loo"),
        mcse=column("mcse_elpd"),
        seconds=column("seconds"),
        scores=tuple(
            Score.from_dict({**{key: row[key] for key in SCORE_FIELDS}, "cached": True})
            for row in rows
        ),
    )


def score_programs(
    space: ProgramSpace,
    env: Env,
    judge_cfg: JudgeConfig,
    paths: Sequence[ProgramPath],
    progress: Callable[[str], None] = print,
    workers: int = 1,
) -> list[Score]:
    """Scores the programs at `paths` with the real judge on `workers` sandboxed workers
    (no score cache: a re-record must run every program), in `paths` order."""
    from synthstats.judge.pool import JudgePool

    with JudgePool(judge_cfg, workers=workers, cache=False) as pool:
        futures = [pool.submit(env, space.completion(path)) for path in paths]
        scores = []
        for number, (path, future) in enumerate(zip(paths, futures, strict=True), start=1):
            score = future.result()
            scores.append(score)
            verdict = f"elpd {score.elpd_loo:.2f}" if score.ok else score.error_kind
            progress(
                f"[{number}/{len(paths)}] {space.labels(path)}: {verdict} ({score.seconds:.1f} s)"
            )
    return scores


def write_scores(
    space: ProgramSpace,
    env: Env,
    judge_cfg: JudgeConfig,
    scores: Sequence[Score],
    path: Path | None = None,
) -> Path:
    """Writes the scores of every program of the space (in `paths()` order) as JSON."""
    if len(scores) != len(space):
        raise ValueError(
            f"need {len(space)} scores for the {space.env_name} space, got {len(scores)}"
        )
    rows = [
        {
            "path": list(program_path),
            "labels": space.labels(program_path),
            "digest": program_digest(space.completion(program_path)),
            **{key: getattr(score, key) for key in SCORE_FIELDS},
        }
        for program_path, score in zip(space.paths(), scores, strict=True)
    ]
    document = {
        "env": space.env_name,
        "data_hash": env.data_hash(),
        "judge": judge_cfg.budget(),
        "versions": {package: version(package) for package in VERSIONED_PACKAGES},
        "scored_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "programs": rows,
    }
    path = path or scores_path(space.env_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
