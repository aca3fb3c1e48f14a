"""`synthstats score`: JSON per file in input order, failures are results, usage errors are not."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synthstats.cli import main
from synthstats.envs import get_env

GOOD = """import pymc as pm
import numpy as np
with pm.Model() as model:
    a = pm.Normal('a', 0, 5)
    b = pm.HalfNormal('b', 2)
    s = pm.HalfNormal('s', 1)
    pm.Normal('length', a + b * np.log(data['age']), s, observed=data['length'])
"""
FIELDS = {"file", "ok", "error_kind", "message", "elpd_loo", "se", "p_loo", "pareto_k_max"}
FIELDS |= {"divergences", "log_reward", "seconds", "cached"}


@pytest.fixture(scope="module")
def program_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("programs")
    files = {
        "good.py": GOOD,  # a bare program
        "leak.txt": "<think>copy it</think>\n```python\n"
        + GOOD.replace("a + b * np.log(data['age'])", "data['length']")
        + "```\n",
        "truncated.txt": "```python\nimport pymc as pm\nwith pm.Model() as model:\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return [str(folder / name) for name in files]


def test_json_records_in_input_order(program_files):
    args = ["score", "--env", "dugongs", "--judge", "fast", "--workers", "1", "--no-cache"]
    result = CliRunner().invoke(main, [*args, *program_files, "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [record["file"] for record in records] == program_files
    assert all(record.keys() >= FIELDS for record in records)
    good, leak, truncated = records
    assert good["ok"] and good["elpd_loo"] > 0 and not good["cached"]
    reference = get_env("dugongs").reference_elpd
    if reference is not None:  # log R at the default temperature 1, clamped to [-20, 10]
        shown = min(10.0, max(-20.0, good["elpd_loo"] - reference))
        assert good["log_reward"] == pytest.approx(shown)
        assert leak["log_reward"] == -25.0  # failures rank below every valid program
    assert leak["error_kind"] == "data_leak"
    assert truncated["error_kind"] == "no_program" and truncated["elpd_loo"] is None


def test_human_output_names_each_file(program_files):
    args = ["score", "--env", "dugongs", "--judge", "fast", "--no-cache", *program_files[1:]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(program_files[1]) and "data_leak" in lines[0]
    assert lines[1].startswith(program_files[2]) and "no_program" in lines[1]


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--env", "no-such-env", "FILE"], "unknown env"),
        (["--env", "dugongs", "--judge", "no-such-judge", "FILE"], "unknown judge"),
        (["--env", "dugongs", "missing.py"], "does not exist"),
        (["--env", "dugongs"], "Missing argument"),
        (["--env", "dugongs", "--workers", "0", "FILE"], "--workers"),
    ],
)
def test_usage_errors_exit_non_zero_with_a_clear_message(args, complaint, program_files):
    args = [program_files[2] if arg == "FILE" else arg for arg in args]
    result = CliRunner().invoke(main, ["score", *args])
    assert result.exit_code != 0
    assert complaint in result.output


def test_human_line_of_a_fit_without_finite_diagnostics():
    from synthstats.judge.cli import _describe
    from synthstats.judge.score import Score

    line = _describe(Score(ok=True, elpd_loo=-3.0, divergences=0), log_reward=0.5)
    assert "elpd_loo=-3.00" in line and "se=n/a" in line and "pareto_k_max=n/a" in line
