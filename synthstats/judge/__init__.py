"""The judge: scores PyMC programs by ELPD-LOO inside a sandbox, never applying a reward
temperature. `score_program` scores one completion; `JudgePool` scores many on persistent
workers, with a persistent score cache."""

from synthstats.judge.cache import ScoreCache
from synthstats.judge.pool import JudgePool
from synthstats.judge.score import ERROR_KINDS, Score
from synthstats.judge.scoring import score_program

__all__ = ["ERROR_KINDS", "JudgePool", "Score", "ScoreCache", "score_program"]
