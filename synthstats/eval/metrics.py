"""How far a policy's distribution p_theta is from the target p*(x) = R(x) / sum R.

Exact metrics need p_theta of every program (an enumerable space and a policy whose
probabilities are exact, like the slot policy); empirical ones need only samples with their
log p_theta and log R, for spaces too large to enumerate. All logs are natural.

Programs are keyed by their completion text. A learned distribution is used as given, not
renormalised: probability a policy leaks outside the space shows up as error, in full:
TV = 1/2 (sum over the space of |p* - p_theta| + mass outside the space).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata

# Modes covered: the top-k programs by reward, covered when p_theta >= floor * p*.
DEFAULT_TOP_K = 5
DEFAULT_FLOOR = 0.5


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """TV(p, q) = 1/2 sum |p - q|, in [0, 1]."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum p log(p / q); terms with p = 0 are 0, and q = 0 < p gives inf."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    support = p > 0
    if np.any(q[support] <= 0):
        return float("inf")
    return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JSD(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, in [0, log 2]."""
    middle = 0.5 * (np.asarray(p, float) + np.asarray(q, float))
    return 0.5 * (kl_divergence(p, middle) + kl_divergence(q, middle))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (ties get average ranks); nan if either is constant."""
    rank_x, rank_y = rankdata(x), rankdata(y)
    if np.ptp(rank_x) == 0 or np.ptp(rank_y) == 0:
        return float("nan")
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def modes_covered(
    target: np.ndarray,
    learned: np.ndarray,
    top_k: int = DEFAULT_TOP_K,
    floor: float = DEFAULT_FLOOR,
) -> float:
    """Share of the top_k programs by target probability given at least floor * p* by the
    learned distribution: 1.0 when every mode gets at least half its due (floor 0.5)."""
    target, learned = np.asarray(target, float), np.asarray(learned, float)
    top = np.argsort(-target, kind="stable")[: min(top_k, target.size)]
    return float(np.mean(learned[top] >= floor * target[top]))


@dataclass(frozen=True)
class ExactMetrics:
    """p_theta against p* over an enumerated space."""

    programs: int
    tv: float
    # KL(p* || p_theta): large when the policy misses programs the target wants.
    kl: float
    jsd: float
    # |learned log Z - log sum R|
    logz_error: float
    log_partition: float
    # Spearman of log p_theta(x) against log R(x) over the space.
    spearman: float
    modes_covered: float
    modes_top_k: int
    modes_floor: float
    # Probability the policy puts on programs of the space (1 unless it leaks).
    mass_in_space: float
    # TV counts the leaked mass 1 - mass_in_space in full (the target has none there).
    # p_theta(valid) of a policy that can also write failures (`exact_metrics_given_valid`):
    # then every other field is of p_theta(. | valid); 1 for a policy that cannot fail.
    p_valid: float = 1.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def target_probabilities(log_reward: np.ndarray) -> np.ndarray:
    """p* = R / sum R, computed stably from log R."""
    log_reward = np.asarray(log_reward, float)
    return np.exp(log_reward - logsumexp(log_reward))


def exact_metrics(
    log_reward: Mapping[str, float],
    learned_log_p: Mapping[str, float],
    learned_log_z: float,
    *,
    top_k: int = DEFAULT_TOP_K,
    floor: float = DEFAULT_FLOOR,
) -> ExactMetrics:
    """Every metric of p_theta against p*, both keyed by program over the same space."""
    if set(log_reward) != set(learned_log_p):
        missing = set(log_reward) ^ set(learned_log_p)
        raise ValueError(f"log_reward and learned_log_p cover different programs ({len(missing)})")
    keys = list(log_reward)
    log_r = np.array([log_reward[key] for key in keys], float)
    log_p = np.array([learned_log_p[key] for key in keys], float)
    target, learned = target_probabilities(log_r), np.exp(log_p)
    log_partition = float(logsumexp(log_r))
    return ExactMetrics(
        programs=len(keys),
        tv=total_variation(target, learned) + 0.5 * max(0.0, 1.0 - float(learned.sum())),
        kl=kl_divergence(target, learned),
        jsd=jensen_shannon(target, learned),
        logz_error=abs(float(learned_log_z) - log_partition),
        log_partition=log_partition,
        spearman=spearman(log_p, log_r),
        modes_covered=modes_covered(target, learned, top_k, floor),
        modes_top_k=min(top_k, len(keys)),
        modes_floor=floor,
        mass_in_space=float(learned.sum()),
    )


def exact_metrics_given_valid(
    log_reward: Mapping[str, float],
    learned_log_p: Mapping[str, float],
    learned_log_z: float,
    *,
    top_k: int = DEFAULT_TOP_K,
    floor: float = DEFAULT_FLOOR,
) -> ExactMetrics:
    """The metrics of p_theta(. | valid) against p*, for a policy that can fail as well.

    `learned_log_p` holds every valid program (the keys of `log_reward`) and may hold failure
    programs too; p(valid) is the mass on the valid ones. The balance's fixed point has
    log Z = log sum R - log p(valid) (synthstats/objectives/failures.py), so the log Z error
    is |log Z + log p(valid) - log sum R|.
    """
    missing = set(log_reward) - set(learned_log_p)
    if missing:
        raise ValueError(f"learned_log_p lacks {len(missing)} valid programs of the target")
    log_p_valid = float(logsumexp([learned_log_p[key] for key in log_reward]))
    conditional = {key: learned_log_p[key] - log_p_valid for key in log_reward}
    metrics = exact_metrics(
        log_reward, conditional, learned_log_z + log_p_valid, top_k=top_k, floor=floor
    )
    return replace(metrics, p_valid=float(np.exp(log_p_valid)))


def importance_log_partition(
    log_reward: Sequence[float], log_p: Sequence[float]
) -> tuple[float, float]:
    """log sum R estimated from samples x_i ~ p_theta as log mean(R(x_i) / p_theta(x_i)),
    with its delta-method standard error sd(w) / (sqrt(n) mean(w))."""
    log_w = np.asarray(log_reward, float) - np.asarray(log_p, float)
    if log_w.size == 0:
        raise ValueError("need at least one sample")
    estimate = float(logsumexp(log_w) - np.log(log_w.size))
    weights = np.exp(log_w - estimate)  # mean 1
    if log_w.size < 2:
        return estimate, float("inf")
    return estimate, float(np.std(weights, ddof=1) / np.sqrt(log_w.size))


@dataclass(frozen=True)
class EmpiricalMetrics:
    """Sample-based metrics. KL(p* || p_theta) has no sample estimate (it is infinite while
    any target program is unsampled), so the reverse KL(p_theta || p*) is given instead."""

    samples: int
    distinct: int
    log_partition_estimate: float
    log_partition_se: float
    # |learned log Z - estimated log sum R|
    logz_error: float
    # KL(p_theta || p*) = E[log p_theta - log R] + log sum R, with the estimate above.
    reverse_kl: float
    # Spearman of log p_theta against log R over the distinct sampled programs.
    spearman: float
    # Against an enumerable target only (None otherwise): the sample histogram's distance.
    tv: float | None = None
    jsd: float | None = None
    modes_covered: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def empirical_distribution(programs: Sequence[str]) -> dict[str, float]:
    """Share of the samples that each distinct program takes."""
    counts = Counter(programs)
    return {program: count / len(programs) for program, count in counts.items()}


def empirical_metrics(
    programs: Sequence[str],
    log_p: Sequence[float],
    log_reward: Sequence[float],
    learned_log_z: float,
    *,
    target_log_reward: Mapping[str, float] | None = None,
    top_k: int = DEFAULT_TOP_K,
    floor: float = DEFAULT_FLOOR,
) -> EmpiricalMetrics:
    """Metrics from samples x_i ~ p_theta with their log p_theta(x_i) and log R(x_i).

    With `target_log_reward` (an enumerable space), the sample histogram is also compared
    with p*; programs sampled outside the target count fully against TV.
    """
    if not len(programs) == len(log_p) == len(log_reward):
        raise ValueError("programs, log_p and log_reward need one entry per sample")
    log_partition, se = importance_log_partition(log_reward, log_p)
    first = {program: index for index, program in reversed(list(enumerate(programs)))}
    distinct = list(first.values())
    extra: dict[str, float] = {}
    if target_log_reward is not None:
        keys = list(target_log_reward)
        histogram = empirical_distribution(programs)
        outside = sum(share for program, share in histogram.items() if program not in keys)
        target = target_probabilities(np.array([target_log_reward[key] for key in keys]))
        sampled = np.array([histogram.get(key, 0.0) for key in keys])
        extra = {
            "tv": total_variation(target, sampled) + 0.5 * outside,
            "jsd": jensen_shannon(np.append(target, 0.0), np.append(sampled, outside)),
            "modes_covered": modes_covered(target, sampled, top_k, floor),
        }
    return EmpiricalMetrics(
        samples=len(programs),
        distinct=len(distinct),
        log_partition_estimate=log_partition,
        log_partition_se=se,
        logz_error=abs(float(learned_log_z) - log_partition),
        reverse_kl=float(np.mean(np.asarray(log_p) - np.asarray(log_reward))) + log_partition,
        spearman=spearman(np.asarray(log_p)[distinct], np.asarray(log_reward)[distinct]),
        **extra,
    )
