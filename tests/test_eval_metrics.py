"""Distribution metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from synthstats.eval.metrics import (
    empirical_distribution,
    empirical_metrics,
    exact_metrics,
    importance_log_partition,
    jensen_shannon,
    kl_divergence,
    modes_covered,
    spearman,
    target_probabilities,
    total_variation,
)

P = np.array([0.5, 0.25, 0.25])
Q = np.array([0.25, 0.25, 0.5])


def test_total_variation_by_hand():
    # 1/2 (0.25 + 0 + 0.25)
    assert total_variation(P, Q) == pytest.approx(0.25)
    assert total_variation(P, P) == 0.0
    assert total_variation([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)


def test_kl_by_hand():
    # 0.5 log 2 + 0.25 log 1 + 0.25 log 0.5 = 0.25 log 2
    assert kl_divergence(P, Q) == pytest.approx(0.25 * math.log(2))
    assert kl_divergence(P, P) == 0.0
    # zero target mass contributes nothing; zero learned mass under target mass is infinite
    assert kl_divergence([0.0, 1.0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert kl_divergence([0.5, 0.5], [0.0, 1.0]) == math.inf


def test_jensen_shannon_by_hand():
    # m = (0.375, 0.25, 0.375); both halves are 0.5 log(4/3) + 0.25 log(2/3)
    expected = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3)
    assert jensen_shannon(P, Q) == pytest.approx(expected)
    assert jensen_shannon([1.0, 0.0], [0.0, 1.0]) == pytest.approx(math.log(2))


def test_spearman_by_hand():
    # rank differences (0, 1, 1, 0): 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties take average ranks: ranks (1.5, 1.5, 3) against (1, 2, 3) -> r = sqrt(3) / 2
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_modes_covered_uses_top_k_by_target_and_relative_floor():
    target = np.array([0.4, 0.3, 0.2, 0.1])
    learned = np.array([0.25, 0.1, 0.6, 0.05])
    # top 2: 0.25 >= 0.5 * 0.4 covered; 0.1 < 0.5 * 0.3 missed
    assert modes_covered(target, learned, top_k=2, floor=0.5) == pytest.approx(0.5)
    assert modes_covered(target, learned, top_k=3, floor=0.5) == pytest.approx(2 / 3)
    assert modes_covered(target, learned, top_k=2, floor=0.3) == pytest.approx(1.0)
    assert modes_covered(target, learned, top_k=10, floor=0.5) == pytest.approx(3 / 4)


def test_target_probabilities_are_softmax_of_log_reward():
    np.testing.assert_allclose(target_probabilities(np.log([1.0, 3.0])), [0.25, 0.75])
    # stable far from 0
    np.testing.assert_allclose(target_probabilities([-1000.0, -1000.0]), [0.5, 0.5])


def test_exact_metrics_by_hand():
    # R = (2, 1, 1): p* = P, log sum R = log 4; the policy is Q
    log_reward = {"a": math.log(2), "b": 0.0, "c": 0.0}
    learned = {"a": math.log(0.25), "b": math.log(0.25), "c": math.log(0.5)}
    metrics = exact_metrics(log_reward, learned, learned_log_z=math.log(4) + 0.3, top_k=1)
    assert metrics.programs == 3
    assert metrics.tv == pytest.approx(0.25)
    assert metrics.kl == pytest.approx(0.25 * math.log(2))
    assert metrics.jsd == pytest.approx(0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3))
    assert metrics.logz_error == pytest.approx(0.3)
    assert metrics.log_partition == pytest.approx(math.log(4))
    # log p (ranks 1.5, 1.5, 3) against log R (ranks 3, 1.5, 1.5): r = -1/2
    assert metrics.spearman == pytest.approx(-0.5)
    # the top program "a" gets 0.25 = 0.5 * p*(a): covered at the floor
    assert metrics.modes_covered == 1.0
    assert metrics.modes_top_k == 1
    assert metrics.mass_in_space == pytest.approx(1.0)
    assert set(metrics.to_dict()) >= {"tv", "kl", "jsd", "logz_error", "spearman"}


def test_exact_metrics_count_leaked_mass_as_error():
    log_reward = {"a": 0.0, "b": 0.0}
    leaky = {"a": math.log(0.4), "b": math.log(0.4)}  # 0.2 outside the space
    metrics = exact_metrics(log_reward, leaky, learned_log_z=math.log(2))
    assert metrics.mass_in_space == pytest.approx(0.8)
    # 1/2 (|0.5 - 0.4| + |0.5 - 0.4| + 0.2 outside): the leaked mass counts in full
    assert metrics.tv == pytest.approx(0.2)
    with pytest.raises(ValueError, match="different programs"):
        exact_metrics(log_reward, {"a": 0.0}, learned_log_z=0.0)


def test_importance_log_partition_is_exact_for_a_stratified_uniform_sample():
    log_r = np.log([1.0, 2.0, 3.0, 4.0])
    log_q = np.full(4, math.log(0.25))
    estimate, se = importance_log_partition(log_r, log_q)
    assert estimate == pytest.approx(math.log(10))
    # weights 4R / 10 = (0.4, 0.8, 1.2, 1.6): sd 0.5164, / sqrt 4
    assert se == pytest.approx(np.std([0.4, 0.8, 1.2, 1.6], ddof=1) / 2)
    # a proposal equal to the target has weights all equal: no error
    exact, zero = importance_log_partition(log_r, log_r - math.log(10))
    assert exact == pytest.approx(math.log(10)) and zero == pytest.approx(0.0)


def test_empirical_metrics_by_hand():
    # target p* = (0.5, 0.25, 0.25) over a, b, c; samples a, a, b, z (z outside the space)
    target = {"a": math.log(2), "b": 0.0, "c": 0.0}
    programs = ["a", "a", "b", "z"]
    log_p = [math.log(0.5), math.log(0.5), math.log(0.25), math.log(0.25)]
    log_r = [math.log(2), math.log(2), 0.0, 0.0]
    metrics = empirical_metrics(
        programs, log_p, log_r, learned_log_z=math.log(4), target_log_reward=target, top_k=2
    )
    assert metrics.samples == 4 and metrics.distinct == 3
    # weights R / p = (4, 4, 4, 4): log sum R = log 4 exactly
    assert metrics.log_partition_estimate == pytest.approx(math.log(4))
    assert metrics.log_partition_se == pytest.approx(0.0)
    assert metrics.logz_error == pytest.approx(0.0)
    # mean(log p - log R) + log Z = log(1/4) + log 4 = 0
    assert metrics.reverse_kl == pytest.approx(0.0)
    # histogram (0.5, 0.25, 0, outside 0.25): 1/2 (0 + 0 + 0.25 + 0.25)
    assert metrics.tv == pytest.approx(0.25)
    # top 2 by p*: a (0.5 >= 0.25) covered, then b or c (stable order: b, 0.25 >= 0.125)
    assert metrics.modes_covered == 1.0
    assert metrics.jsd == pytest.approx(2 * 0.5 * 0.25 * math.log(2))
    assert metrics.spearman == pytest.approx(spearman([0.5, 0.25, 0.25], [2, 1, 1]))


def test_empirical_distribution_counts_shares():
    assert empirical_distribution(["x", "y", "x", "x"]) == {"x": 0.75, "y": 0.25}
