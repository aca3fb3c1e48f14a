"""`synthstats bench judge`: one real run of both paths, and the numbers it reports."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synthstats.cli import main


@pytest.mark.slow
def test_bench_judge_scores_the_same_programs_both_ways_and_reports_the_ratio():
    result = CliRunner().invoke(
        main, ["bench", "judge", "--env", "dugongs", "--programs", "2", "--workers", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["programs"] == 2 and numbers["workers"] == 1
    assert numbers["compile_cache"] == "warm"
    assert numbers["not_ok"] == []
    # same seed, same budget, same compiled code: both paths score identically
    assert numbers["max_elpd_difference"] == 0.0
    assert numbers["naive_per_min"] > 0 and numbers["pool_per_min"] > 0
    assert numbers["ratio"] == pytest.approx(numbers["pool_per_min"] / numbers["naive_per_min"])
    assert 0 < numbers["cache_hit_ms"] < 1000
    # the breakdown adds up to each path's clock; the pool's includes its workers' start-up
    naive_seconds = 2 * 60 / numbers["naive_per_min"]
    pool_seconds = 2 * 60 / numbers["pool_per_min"]
    assert 2 * (numbers["naive_program_s"] + numbers["naive_process_s"]) == pytest.approx(
        naive_seconds
    )
    assert numbers["pool_startup_and_idle_s"] + 2 * numbers["pool_program_s"] == pytest.approx(
        pool_seconds
    )
    assert numbers["naive_process_s"] > 1 and numbers["pool_startup_and_idle_s"] > 1
    structures = numbers["structures"]
    assert structures["new"]["programs"] == structures["warm"]["programs"] == 2
    assert structures["warm"]["compile_share"] < structures["new"]["compile_share"]


def test_bench_judge_rejects_an_unknown_env_with_the_names_it_knows():
    result = CliRunner().invoke(main, ["bench", "judge", "--env", "dugong"])
    assert result.exit_code == 2
    assert "dugongs" in result.output


@pytest.mark.slow
def test_bench_judge_compile_measures_both_linkers_on_the_same_new_structures():
    result = CliRunner().invoke(
        main,
        ["bench", "judge-compile", "--envs", "dugongs", "--programs", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)  # progress goes to stderr, the JSON alone to stdout
    assert "1/1 dugongs" in result.stderr
    assert numbers["programs"] == 1
    for mode in ("per_op", "whole_function"):
        for which in ("new", "warm"):
            part = numbers[mode][which]
            assert part["programs"] == 1 and part["failed"] == 0 and part["per_min"] > 0
            assert part["median_s"] <= part["p90_s"]
            shares = part["compile_share"] + part["sampling_share"] + part["loo_share"]
            assert 0.5 < shares <= 1.0
        # a warm structure compiles nothing new
        assert numbers[mode]["warm"]["compile_share"] < numbers[mode]["new"]["compile_share"]
    assert numbers["ratio_median_new"] == pytest.approx(
        numbers["per_op"]["new"]["median_s"] / numbers["whole_function"]["new"]["median_s"]
    )
    assert numbers["elpd"] == {
        "compared": 1,
        "within": 1,
        "max_difference": pytest.approx(numbers["elpd"]["max_difference"]),
    }
