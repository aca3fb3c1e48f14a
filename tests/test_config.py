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
from synthstats.envs.spaces import get_space
from synthstats.eval.recipe import SLOT_STEPS, apply_slot_recipe

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
    arguments = ["policy=mock", "output_dir=runs/x"]
    config = resolve(arguments)
    dumped = yaml.safe_load(CliRunner().invoke(train, [*arguments, "--dry-run"]).stdout)
    assert dumped == dataclasses.asdict(config)


def test_dry_run_of_a_slot_run_prints_the_recipe_it_will_run():
    dumped = yaml.safe_load(CliRunner().invoke(train, ["env=peregrines", "--dry-run"]).stdout)
    assert dumped["runner"]["train"]["steps"] == SLOT_STEPS
    assert (
        dumped["objective"]["reward"]["temperature"] == get_space("peregrines").reward_temperature
    )


@pytest.mark.parametrize(
    ("typed", "key", "value"),
    [
        # Equal to the shipped default, yet typed: the user's value must win.
        ("runner.train.steps=100", "runner.train.steps", 100),
        ("objective.reward.temperature=1.0", "objective.reward.temperature", 1.0),
        ("logging.every=1", "logging.every", 1),
    ],
)
def test_a_typed_value_always_wins_over_the_slot_recipe(typed, key, value, tmp_path):
    dumped = yaml.safe_load(dry_run("env=peregrines", typed).stdout)
    node = dumped
    for part in key.split("."):
        node = node[part]
    assert node == value
    # The same key from a config file counts as typed too.
    file = tmp_path / "mine.yaml"
    *parents, leaf = key.split(".")
    tree: dict = {leaf: value}
    for parent in reversed(parents):
        tree = {parent: tree}
    file.write_text(yaml.safe_dump(tree))
    config, filled = apply_slot_recipe(
        resolve(["env=peregrines"], str(file)), get_space("peregrines")
    )
    assert key not in filled


def test_provenance_records_only_what_the_user_set(tmp_path):
    file = tmp_path / "mine.yaml"
    file.write_text("judge:\n  draws: 300\n")
    config = resolve(["env=surgical", "runner.train.steps=100"], str(file))
    assert config.user_set == {"runner.train.steps", "judge.draws"}
    assert "user_set" not in to_yaml(config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("policy.lora_r=0", "policy.lora_r must be >= 1, got 0"),
        ("policy.max_new_tokens=0", "policy.max_new_tokens must be >= 1"),
        ("judge.draws=0", "judge.draws must be >= 1"),
        ("judge.chains=0", "judge.chains must be >= 1"),
        ("judge.timeout_s=0", "judge.timeout_s must be > 0"),
        ("runner.train.replay_capacity=0", "runner.train.replay_capacity must be >= 1"),
        ("runner.train.learning_rate=-1e-4", "runner.train.learning_rate must be > 0"),
        ("objective.lamda=0", "objective.lamda must be in (0, 1]"),
        ("objective.lamda=1.5", "objective.lamda must be in (0, 1]"),
        ("objective.reward.low=60", "objective.reward.low must be below objective.reward.high"),
        (
            "runner.train.exploration.temperature_min=2",
            "temperature_min must be <= temperature_max",
        ),
        ("policy.lora_target_modules=[]", "policy.lora_target_modules must name at least one"),
        ("policy.lora_dropout=0.05", "policy.lora_dropout=0.05 would have no effect"),
        ("policy.thinking=on", "policy.thinking: expected 'off' | 'latent', got 'on'"),
        ("logging.every=0", "logging.every must be >= 1, got 0"),
        ("runner.train.keep_checkpoints=0", "runner.train.keep_checkpoints must be >= 1"),
        ("policy=hf_qwen3_0_6b policy.model_name=", "policy.kind=hf needs policy.model_name"),
    ],
)
def test_each_range_and_relation_is_checked(override, message):
    with pytest.raises(ConfigError) as raised:
        resolve(override.split())
    assert message in str(raised.value)
    result = dry_run(*override.split())
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as raised:
        resolve(["policy.lora_r=0", "objective.lamda=2", "judge.draws=abc", "runner.train.stepz=1"])
    assert len(raised.value.problems) == 4
    assert str(raised.value).startswith("4 problems in the settings:")
    for fragment in ("policy.lora_r", "objective.lamda", "judge.draws", "runner.train.stepz"):
        assert fragment in str(raised.value)


def test_yes_and_no_still_read_as_booleans():
    config = resolve(["policy.gradient_checkpointing=yes", "judge.cache=off"])
    assert config.policy.gradient_checkpointing is True and config.judge.cache is False
