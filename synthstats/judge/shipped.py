"""A judge stand-in for slot runs: the real judge's shipped scores of a space, looked up.

Every program of a space was scored once by the real judge at the default judge config
(scores/ENV.json). A slot run that scored them again would spend minutes reproducing the
same seeded numbers, so the loop may take this instead of a JudgePool: `score_async` has
the same signature and returns a finished Future of the stored Scores, marked cached.
Declared failure programs (synthstats/envs/spaces/failures.py) get the gate's refusal,
which is deterministic and needs no PyMC run.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

from synthstats.envs.spaces.grammar import ProgramSpace
from synthstats.judge.score import Score
from synthstats.judge.scoring import prepare
from synthstats.judge.space_scores import load_scores

if TYPE_CHECKING:
    from synthstats.envs.base import Env


class ShippedScoresJudge:
    """Scores the programs of one space from its shipped file and the declared failure
    programs by the gate; refuses anything else."""

    def __init__(self, space: ProgramSpace, failures: Sequence[str] = ()) -> None:
        self.space = space
        self.shipped = load_scores(space)
        self._by_completion = dict(zip(space.completions, self.shipped.scores, strict=True))
        for text in failures:
            verdict = prepare(text)
            if not isinstance(verdict, Score) or verdict.ok:
                raise ValueError(f"a declared failure program passes the judge's gate:\n{text}")
            self._by_completion[text] = verdict

    def score(self, env: Env, programs: Sequence[str]) -> list[Score]:
        if env.name != self.space.env_name or env.data_hash() != self.shipped.data_hash:
            raise ValueError(
                f"the shipped scores are for {self.space.env_name}'s data; got env {env.name!r} "
                "with other data: re-score the space or use the real judge"
            )
        unknown = [text for text in programs if text not in self._by_completion]
        if unknown:
            raise ValueError(
                f"{len(unknown)} programs are not in the {self.space.env_name} space; "
                "the shipped scores cover only its programs and the declared failures"
            )
        return [self._by_completion[text] for text in programs]

    def score_async(self, env: Env, programs: Sequence[str]) -> Future[list[Score]]:
        future: Future[list[Score]] = Future()
        future.set_result(self.score(env, programs))
        return future
