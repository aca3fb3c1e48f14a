"""Score one completion: extract the program, gate it, run it in a sandboxed worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from synthstats.judge.extract import extract_program
from synthstats.judge.gate import check_program
from synthstats.judge.sandbox import SandboxedWorker
from synthstats.judge.score import Score

if TYPE_CHECKING:
    from synthstats.config import JudgeConfig
    from synthstats.envs.base import Env


def prepare(text: str) -> str | Score:
    """The gated program of a completion, or the Score of a completion that fails before
    running (no_program, syntax, forbidden). Cheap: runs in the caller's process."""
    source = extract_program(text)
    if source is None:
        return Score.failure("no_program", "no closed ```python block (truncated completion?)")
    verdict = check_program(source)
    if verdict is not None:
        return Score.failure(*verdict)
    return source


def score_program(env: Env, text: str, judge_cfg: JudgeConfig) -> Score:
    """Scores one completion (or bare program text in a ```python block) in a fresh worker.

    Starting a worker imports PyMC, so this costs seconds; score many programs with
    JudgePool, which keeps its workers.
    """
    prepared = prepare(text)
    if isinstance(prepared, Score):
        return prepared
    with SandboxedWorker(judge_cfg) as worker:
        return worker.score(prepared, env)
