"""What a new user meets first: help, exit codes, mistakes without tracebacks, launchers.

Each check runs the real command (click's CliRunner, or bash for the launch scripts) and
stops before any model loads, so the file takes seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthstats.cli import main, settings_help, train
from synthstats.launch import accelerate_configs_dir

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_SCRIPTS = sorted((ROOT / "launch").iterdir())


def run_train(*arguments: str):
    return CliRunner().invoke(train, [*arguments, "--no-progress"])


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize(
    "command", [[], ["score"], ["eval"], ["envs"], ["launch"], ["bench"], ["bench", "judge"]]
)
def test_every_command_takes_h_and_help(command, flag):
    result = CliRunner().invoke(main, [*command, flag])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")


def test_train_help_shows_every_settings_help_text():
    result = CliRunner().invoke(train, ["-h"])
    assert result.exit_code == 0
    keys = [key for key, _ in settings_help()]
    assert len(keys) > 80
    for key in keys:
        assert key in result.output
    # The help text comes from the comment above the field in config.py.
    assert "Steps between console lines and W&B" in result.output
    assert "Exit status: 0 done, 2" in result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["env.name=dugong", "policy=mock"], "env.name='dugong' is not an env"),
        (["policy=hf_qwen3_0_6b", "policy.model_name="], "needs policy.model_name"),
        (["policy=mock", "output_dir=/proc/x"], "output_dir=/proc/x: cannot create folders"),
        (
            ["policy=hf_qwen3_0_6b", "policy.model_name=/no/such/model"],
            "policy.model_name=/no/such/model: no model folder there",
        ),
        (
            ["policy=hf_qwen3_0_6b", "policy.model_name=nobody/no-such-model-xyz"],
            "policy.model_name=nobody/no-such-model-xyz: not in the local Hugging Face cache",
        ),
        (["policy=mock", "logging.every=0"], "logging.every must be >= 1, got 0"),
        (
            ["policy=mock", "sft_warmstart.enabled=true", "sft_warmstart.data_path=none.jsonl"],
            "sft_warmstart.data_path=none.jsonl: no such file",
        ),
        (["env=irt"], "env 'irt' has no enumerable program space"),
        (["policy=mock", "policy.thinking=on"], "expected 'off' | 'latent', got 'on'"),
    ],
)
def test_mistakes_exit_2_with_a_message_and_create_nothing(
    arguments, message, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub answer must not depend on a network
    monkeypatch.chdir(tmp_path)
    if not any(argument.startswith("output_dir=") for argument in arguments):
        arguments = [*arguments, f"output_dir={tmp_path / 'run'}"]
    result = run_train("runner=local", *arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []


def test_a_file_as_output_dir_is_refused(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("")
    result = run_train("policy=mock", f"output_dir={taken}")
    assert result.exit_code == 2 and "is a file" in result.output


def test_input_problems_are_reported_together(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_train(
        "policy=hf_qwen3_0_6b",
        "policy.model_name=./missing-model",
        "sft_warmstart.enabled=true",
        "sft_warmstart.data_path=missing.jsonl",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.exit_code == 2
    assert "2 problems in the settings" in result.output
    assert "./missing-model" in result.output and "missing.jsonl" in result.output


def test_dry_run_prints_the_config_even_when_inputs_are_missing_here(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(
        train, ["policy=hf_qwen3_0_6b", "policy.model_name=org/not-here", "--dry-run"]
    )
    assert result.exit_code == 0
    assert "model_name: org/not-here" in result.stdout
    assert "# a run here would stop: policy.model_name=org/not-here" in result.stderr


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS, ids=lambda path: path.name)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_launch_script_prints_its_usage(script, flag):
    result = subprocess.run(["bash", str(script), flag], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "synthstats-train overrides" in result.stdout
    assert "#" not in result.stdout.splitlines()[0]


def test_multi_gpu_without_a_config_prints_usage_and_exits_2():
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / "multi_gpu.sh")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Usage" in result.stderr


@pytest.mark.parametrize(
    ("name", "file"),
    [("zero2", "deepspeed_zero2.yaml"), ("zero3", "deepspeed_zero3.yaml"), ("cpu_2proc", None)],
)
def test_launch_resolves_shipped_accelerate_configs_by_name(name, file):
    result = CliRunner().invoke(
        main, ["launch", name, "--print-command", "--", "policy=mock", "runner.train.steps=2"]
    )
    assert result.exit_code == 0, result.output
    config = accelerate_configs_dir() / (file or f"{name}.yaml")
    command = result.output.split()
    assert command[:4] == [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    assert command[4] == str(config)
    assert command[-3].endswith("synthstats-train")
    assert command[-2:] == ["policy=mock", "runner.train.steps=2"]


def test_launch_takes_a_yaml_path_and_names_the_shipped_ones_for_a_typo(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("distributed_type: NO\n")
    result = CliRunner().invoke(main, ["launch", str(mine), "--print-command"])
    assert result.exit_code == 0 and str(mine) in result.output
    result = CliRunner().invoke(main, ["launch", "zero9"])
    assert result.exit_code == 2
    assert "deepspeed_zero2" in result.output and "zero2 (deepspeed_zero2)" in result.output


@pytest.mark.slow
def test_launch_runs_synthstats_train_under_accelerate(tmp_path):
    """Two real CPU processes under accelerate, each resolving the config (dry run)."""
    result = subprocess.run(
        [
            *(sys.executable, "-c", "from synthstats.cli import main; main()"),
            *("launch", "cpu_2proc", "--", "policy=mock", "--dry-run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("kind: mock") == 2


@pytest.mark.parametrize(
    "arguments",
    [
        ["eval", "no-such-run"],
        ["score", "--env", "dugong", "PROGRAM"],
        ["score", "--env", "dugongs", "--judge", "slow", "PROGRAM"],
        ["envs", "show", "dugong"],
        ["bench", "judge", "--env", "dugong"],
        ["launch", "zero9"],
    ],
)
def test_usage_mistakes_exit_2_in_every_command(arguments, tmp_path):
    program = tmp_path / "model.py"
    program.write_text("x = 1\n")
    arguments = [str(program) if item == "PROGRAM" else item for item in arguments]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert "Error" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("arguments", [["env=irt"], ["env.name=dugong"]])
def test_dry_run_refuses_settings_that_are_wrong_on_any_machine(arguments):
    result = CliRunner().invoke(train, [*arguments, "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(title)
    return text[start : text.index("\n#", start + len(title))]


def test_readme_names_every_group_option():
    from synthstats.config import GROUPS, group_options

    section = readme_section("## Command line")
    groups_bullet = section[section.index("- Groups") : section.index("- Overrides")]
    for group in GROUPS:
        for option in group_options(group):
            assert f"`{option}`" in groups_bullet or group == "env", (group, option)


def test_readme_lists_every_slot_substitution_the_code_makes():
    from synthstats.envs.spaces import get_space
    from synthstats.eval.recipe import slot_settings

    section = readme_section("## Does it sample in proportion to reward?")
    keys = slot_settings(get_space("dugongs"), 2000)
    for key in keys:
        assert f"`{key}" in section, key
