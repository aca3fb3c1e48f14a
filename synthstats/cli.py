"""Command line: `synthstats-train` trains; `synthstats` holds the other tools.

synthstats-train env=dugongs policy=hf_qwen3_0_6b runner=local
synthstats-train env=peregrines runner.train.steps=1000 logging=wandb --dry-run
synthstats envs show dugongs --json
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import typing
from pathlib import Path

import click

from synthstats.config import (
    GROUPS,
    Config,
    ConfigError,
    group_options,
    resolve,
    to_yaml,
)
from synthstats.errors import UserFacingError

# Usage mistakes (settings, inputs) exit 2, as click's own; failures while running exit 1;
# a run stopped by a signal exits 128 + the signal (143 SIGTERM, 130 Ctrl-C), resumable.
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
HELP = {"help_option_names": ["-h", "--help"]}

_TRAIN_EPILOG = """\b
Arguments are GROUP=OPTION selections and dotted KEY=VALUE overrides:
  synthstats-train env=peregrines policy=hf_qwen3_0_6b runner=local
  synthstats-train runner.train.batch_size=4 runner.train.steps=1000 logging=wandb
  synthstats-train sft_warmstart.enabled=true sft_warmstart.data_path=sft.jsonl
Values are read as YAML: 4 is an int, true a bool, [-700,700] a list. A value you give
always wins: group files, the slot recipe and presets fill only what you leave unset.
Exit status: 0 done, 2 a mistake in the settings or inputs (nothing was started),
1 a failure while running, 143 or 130 stopped by SIGTERM or Ctrl-C (resume=RUN_DIR).
"""


def _groups_help() -> str:
    try:
        return "\n".join(f"  {group}: {', '.join(group_options(group))}" for group in GROUPS)
    except ConfigError as error:
        return f"  (config groups unavailable: {error})"


def _comments(cls: type) -> dict[str, str]:
    """Each field's help: the comment block right above it in config.py (one source of
    truth); the fields after the first under one block are shown with the default only."""
    found: dict[str, str] = {}
    block: list[str] = []
    after_comment = False
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            block = [*block, text] if after_comment else [text]
            after_comment = True
            continue
        after_comment = False
        if match := re.match(r"(\w+)\s*:", stripped):
            found[match.group(1)] = " ".join(block)
        block = []
    return found


def settings_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, "= default  help") for every setting, nested sections included."""
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    rows = []
    default = cls()
    for item in dataclasses.fields(cls):
        key = f"{prefix}{item.name}"
        value = getattr(default, item.name)
        if dataclasses.is_dataclass(hints[item.name]):
            rows.extend(settings_help(hints[item.name], key + "."))
            continue
        text = comments.get(item.name, "")
        rows.append((key, f"= {value!r}" + (f"  {text}" if text else "")))
    return rows


class _TrainCommand(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        formatter.write("\n\b\nGroups and their options:\n" + _groups_help() + "\n")
        with formatter.section(
            "Settings (KEY=VALUE: the built-in default, before group files, and what it does;"
            " --dry-run prints the resolved values)"
        ):
            formatter.write_dl(settings_help())


@click.command(
    cls=_TrainCommand, epilog=_TRAIN_EPILOG, context_settings={"show_default": True, **HELP}
)
@click.argument("overrides", nargs=-1, metavar="[GROUP=OPTION | KEY=VALUE]...")
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A YAML file of your own, merged over the group defaults and under the command line.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Resolve and check the settings, print the config that would run (the slot "
    "recipe applied) as YAML, and exit without creating anything. Inputs missing on this "
    "machine (model, SFT file, output folder) are reported as # comments on stderr.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars (for logs and CI).")
def train(overrides: tuple[str, ...], config_file: str | None, dry_run: bool, no_progress: bool):
    """Train a policy as a GFlowNet sampler over PyMC programs for one env."""
    from synthstats.train.preflight import check_inputs, check_settings

    try:
        config = resolve(list(overrides), config_file)
        check_settings(config)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    try:
        check_inputs(config)
    except ConfigError as error:
        if not dry_run:
            raise click.UsageError(str(error)) from None
        # A config may be prepared on another machine than the one that will run it:
        # say what would stop a run here, as YAML comments, and still print the config.
        for problem in error.problems:
            click.echo(f"# a run here would stop: {problem}", err=True)
    if dry_run:
        click.echo(to_yaml(_as_it_runs(config)), nl=False)
        return
    if config.policy.kind == "slot":
        from synthstats.eval.validation import run_validation as run
    else:
        from synthstats.train.run import run
    from synthstats.train.run_dir import remove_unstarted

    run_dir = Path(config.resume or config.output_dir)
    existed = run_dir.exists()
    try:
        summary = run(config, show_progress=not no_progress)
    except BaseException as error:
        if not existed:
            remove_unstarted(run_dir)
        if isinstance(error, ConfigError):
            raise click.UsageError(str(error)) from None
        if isinstance(error, UserFacingError):
            click.echo(f"synthstats-train: {error}", err=True)
            sys.exit(EXIT_FAILED)
        if isinstance(error, KeyboardInterrupt):
            click.echo("synthstats-train: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        raise
    sys.exit(summary.exit_code)


def _as_it_runs(config: Config) -> Config:
    """The config a run would use: a slot run fills in its recipe where the user set nothing."""
    if config.policy.kind != "slot":
        return config
    from synthstats.envs.spaces import get_space
    from synthstats.eval.recipe import apply_slot_recipe

    return apply_slot_recipe(config, get_space(config.env.name))[0]


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when it runs, so `--help` stays fast."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self._lazy_commands:
            return super().get_command(ctx, name)
        module_name, attribute = self._lazy_commands[name].split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(
    cls=_LazyGroup,
    context_settings=HELP,
    lazy_commands={
        "envs": "synthstats.envs.cli:envs",
        "launch": "synthstats.launch:launch",
        "eval": "synthstats.eval.cli:eval_command",
        "score": "synthstats.judge.cli:score",
    },
)
@click.version_option(package_name="synthstats")
def main() -> None:
    """SynthStats tools: list envs, score programs, benchmark, evaluate runs."""


@main.group(
    cls=_LazyGroup,
    lazy_commands={
        "judge": "synthstats.judge.bench:bench_judge",
        "judge-compile": "synthstats.judge.bench:bench_judge_compile",
        "train": "synthstats.train.bench:bench_train",
    },
)
def bench() -> None:
    """Benchmarks: judge throughput against a naive baseline, and training throughput."""
