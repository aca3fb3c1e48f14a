"""`synthstats envs` through click's test runner."""

import json

from click.testing import CliRunner

from synthstats.envs import env_names, get_env
from synthstats.envs.cli import envs


def test_bare_command_lists_every_env_with_counts_and_observed():
    result = CliRunner().invoke(envs, [])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "observations", "observed"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == env_names()
    assert rows["dugongs"] == ["27", "length"]
    assert rows["lotka_volterra"] == ["50", "populations"]


def test_show_prints_the_prompt():
    result = CliRunner().invoke(envs, ["show", "surgical"])
    assert result.exit_code == 0, result.output
    for message in get_env("surgical").render_prompt():
        assert message["content"] in result.output


def test_show_json_carries_everything():
    result = CliRunner().invoke(envs, ["show", "peregrines", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    env = get_env("peregrines")
    assert record["name"] == "peregrines"
    assert record["observed"] == ["pairs"]
    assert record["data"]["pairs"][:3] == [34, 45, 39]
    assert record["prompt"] == env.render_prompt()
    assert record["reference_program"] == env.reference_program
    assert record["reference_elpd"] == env.reference_elpd
    assert len(record["demonstrations"]) >= 8
    assert all("```python" in completion for completion in record["demonstrations"])


def test_unknown_name_is_a_clean_error():
    result = CliRunner().invoke(envs, ["show", "nope"])
    assert result.exit_code != 0
    assert "unknown env 'nope'" in result.output
    assert "dugongs" in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, ValueError)
