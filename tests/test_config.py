"""The command line resolves seed commands into a typed config and rejects bad input plainly."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from click.testing import CliRunner

from synthstats.cli import train
from synthstats.config import (
    Config,
    ConfigError,
    JudgeConfig,
    ObjectiveConfig,
    PolicyConfig,
    group_options,
    load_judge_config,
    resolve,
    to_yaml,
)

SEED_COMMANDS = [
    "runner=local env=dugongs policy=hf_qwen3_0_6b",
    "runner=local env=peregrines policy=hf_qwen3_0_6b",
    "runner=local env=dugongs policy=hf_qwen3_4b runner.train.batch_size=4 "
    "runner.train.steps=1000 logging=wandb",
    "runner=local env=dugongs policy=hf_qwen3_0_6b sft_warmstart.enabled=true "
    "sft_warmstart.data_path=sft.jsonl sft_warmstart.compute_rewards=true "
    "sft_warmstart.max_examples=50 sft_warmstart.strip_thinking=true "
    "sft_warmstart.log_clamp=[-700,700] sft_warmstart.show_progress=false",
]


def dry_run(*arguments: str):
    return CliRunner().invoke(train, [*arguments, "--dry-run"])


@pytest.mark.parametrize("command", SEED_COMMANDS)
def test_seed_commands_dry_run_print_resolved_yaml(command):
    result = dry_run(*command.split())
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    for argument in command.split():
        key, value = argument.split("=", 1)
        if "." not in key:
            if key in ("runner",):
                assert resolved["runner"]["name"] == value
            continue
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node == yaml.safe_load(value)


def test_seed_command_selects_group_files():
    config = resolve(SEED_COMMANDS[2].split())
    assert config.env.name == "dugongs"
    assert config.policy.kind == "hf"
    assert config.policy.model_name == "Qwen/Qwen3-4B"
    assert config.runner.train.batch_size == 4
    assert config.runner.train.steps == 1000
    assert config.logging.backend == "wandb"


def test_sft_seed_command_types():
    config = resolve(SEED_COMMANDS[3].split())
    sft = config.sft_warmstart
    assert sft.enabled is True and sft.compute_rewards is True and sft.strip_thinking is True
    assert sft.data_path == "sft.jsonl"
    assert sft.max_examples == 50
    assert sft.log_clamp == [-700.0, 700.0]
    assert sft.show_progress is False


def test_defaults_are_typed_and_sane():
    config = resolve([])
    assert isinstance(config, Config)
    assert isinstance(config.policy, PolicyConfig)
    assert isinstance(config.objective, ObjectiveConfig)
    assert isinstance(config.judge, JudgeConfig)
    assert config.env.name == "dugongs"
    assert config.policy.kind == "slot"
    assert config.policy.thinking == "off"
    assert config.objective.loss == "subtb"
    assert config.objective.lamda == 0.9
    assert config.objective.log_z_lr == 0.1
    reward = config.objective.reward
    assert reward.failure_log_reward < reward.low < reward.high
    assert config.sft_warmstart.enabled is False
    assert config.sft_warmstart.log_clamp == [-700.0, 700.0]
    assert config.sft_warmstart.dedupe is True
    assert config.output_dir.startswith("runs/dugongs-")
    assert config.resume is None


def test_every_policy_and_runner_named_by_the_seed_exists():
    assert {"hf_qwen3_0_6b", "hf_qwen3_4b", "mock", "tinker"} <= set(group_options("policy"))
    assert {"local", "tinker"} <= set(group_options("runner"))


def test_output_dir_follows_env_and_can_be_set(tmp_path):
    assert resolve(["env=peregrines"]).output_dir.startswith("runs/peregrines-")
    assert resolve([f"output_dir={tmp_path}"]).output_dir == str(tmp_path)


def test_resume_starts_from_the_saved_run_config(tmp_path):
    saved = resolve(["env=surgical", "runner.train.steps=6", f"output_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(to_yaml(saved))
    resumed = resolve([f"resume={tmp_path}", "runner.train.steps=9"])
    assert resumed.resume == str(tmp_path)
    assert resumed.env.name == "surgical"
    assert resumed.output_dir == str(tmp_path)
    assert resumed.runner.train.steps == 9
    with pytest.raises(ConfigError, match="no config.yaml"):
        resolve([f"resume={tmp_path / 'elsewhere'}"])


def test_yaml_off_is_read_as_the_word_off():
    assert resolve(["policy.thinking=off"]).policy.thinking == "off"
    assert resolve(["policy.thinking=latent"]).policy.thinking == "latent"


def test_config_file_merges_under_command_line(tmp_path):
    user_file = tmp_path / "my.yaml"
    user_file.write_text("env: surgical\nrunner:\n  train:\n    steps: 7\n    batch_size: 3\n")
    config = resolve(["runner.train.batch_size=5"], config_file=str(user_file))
    assert config.env.name == "surgical"
    assert config.runner.train.steps == 7
    assert config.runner.train.batch_size == 5


def test_unknown_env_lists_every_env():
    result = dry_run("env=nosuch")
    assert result.exit_code != 0
    assert "unknown env 'nosuch'" in result.output
    for name in group_options("env"):
        assert name in result.output
    assert "Traceback" not in result.output


def test_unknown_policy_lists_options():
    result = dry_run("policy=gpt5")
    assert result.exit_code != 0
    assert "hf_qwen3_0_6b" in result.output and "tinker" in result.output


def test_misspelt_key_suggests_the_closest():
    result = dry_run("runner.train.bacth_size=4")
    assert result.exit_code != 0
    assert "runner.train.bacth_size" in result.output
    assert "did you mean runner.train.batch_size" in result.output


def test_misspelt_root_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean output_dir"):
        resolve(["ouput_dir=x"])


def test_wrong_type_names_key_expected_and_given():
    result = dry_run("runner.train.steps=many")
    assert result.exit_code != 0
    assert "runner.train.steps" in result.output
    assert "expected int" in result.output
    assert "'many' (str)" in result.output


def test_bool_is_not_an_int_and_list_items_are_checked():
    with pytest.raises(ConfigError, match="runner.train.steps: expected int, got True"):
        resolve(["runner.train.steps=true"])
    with pytest.raises(ConfigError, match=r"sft_warmstart.log_clamp\[1\]: expected float"):
        resolve(["sft_warmstart.log_clamp=[-1,high]"])


def test_scientific_notation_reads_as_a_float():
    assert resolve(["runner.train.learning_rate=1e-3"]).runner.train.learning_rate == 0.001
    assert resolve(["objective.log_z_lr=5E+1"]).objective.log_z_lr == 50.0
    with pytest.raises(ConfigError, match="expected int"):
        resolve(["runner.train.steps=1e3"])


def test_choice_fields_name_the_choices():
    with pytest.raises(ConfigError, match="objective.loss: expected 'subtb' \\| 'tb' \\| 'db'"):
        resolve(["objective.loss=ppo"])


def test_section_given_a_scalar_is_rejected():
    with pytest.raises(ConfigError, match="runner.train: expected a mapping"):
        resolve(["runner.train=3"])


def test_argument_without_equals_is_explained():
    result = dry_run("dugongs")
    assert result.exit_code != 0
    assert "expected GROUP=OPTION" in result.output


def test_semantic_checks_fail_early():
    with pytest.raises(ConfigError, match="data_path"):
        resolve(["sft_warmstart.enabled=true"])
    with pytest.raises(ConfigError, match="log_clamp"):
        resolve(["sft_warmstart.log_clamp=[5,1]"])
    with pytest.raises(ConfigError, match="failure_log_reward"):
        resolve(["objective.reward.failure_log_reward=0"])
    with pytest.raises(ConfigError, match="replay_fraction"):
        resolve(["runner.train.replay_fraction=1.5"])


def test_config_file_errors_are_clear(tmp_path):
    result = dry_run("--config-file", str(tmp_path / "missing.yaml"))
    assert result.exit_code != 0 and "cannot read" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("runner: [unclosed\n")
    result = dry_run("--config-file", str(broken))
    assert result.exit_code != 0 and "not valid YAML" in result.output


def test_judge_config_loads_by_name():
    judge = load_judge_config("default")
    assert judge.name == "default"
    assert judge.draws > 0 and judge.chains >= 1 and judge.timeout_s > 0


def test_help_documents_every_option():
    result = CliRunner().invoke(train, ["--help"])
    assert result.exit_code == 0
    for option in ("--config-file", "--dry-run", "--no-progress"):
        assert option in result.output
    for group in ("env:", "policy:", "runner:", "logging:"):
        assert group in result.output


def test_dry_run_round_trips_through_yaml():
    config = resolve(["env=dugongs", "output_dir=runs/x"])
    dumped = yaml.safe_load(CliRunner().invoke(train, ["output_dir=runs/x", "--dry-run"]).output)
    assert dumped == dataclasses.asdict(config)
