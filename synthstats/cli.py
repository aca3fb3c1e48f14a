"""Command line: `synthstats-train` trains; `synthstats` holds the other tools.

synthstats-train env=dugongs policy=hf_qwen3_0_6b runner=local
synthstats-train env=peregrines runner.train.steps=1000 logging=wandb --dry-run
synthstats envs show dugongs --json
"""

from __future__ import annotations

import importlib
import sys

import click

from synthstats.config import GROUPS, ConfigError, group_options, resolve, to_yaml
from synthstats.errors import UserFacingError

# The shell's convention for a process ended by SIGTERM: the run stopped early, resumable.
_EXIT_TERMINATED = 143

_TRAIN_EPILOG = """\b
Arguments are GROUP=OPTION selections and dotted KEY=VALUE overrides:
  synthstats-train env=peregrines policy=hf_qwen3_0_6b runner=local
  synthstats-train runner.train.batch_size=4 runner.train.steps=1000 logging=wandb
  synthstats-train sft_warmstart.enabled=true sft_warmstart.data_path=sft.jsonl
Values are read as YAML: 4 is an int, true a bool, [-700,700] a list.
Root keys: output_dir (default runs/<env>-<timestamp>), resume (a run directory), seed.
"""


def _groups_help() -> str:
    try:
        return "\n".join(f"  {group}: {', '.join(group_options(group))}" for group in GROUPS)
    except ConfigError as error:
        return f"  (config groups unavailable: {error})"


class _TrainCommand(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        formatter.write("\n\b\nGroups and their options:\n" + _groups_help() + "\n")


@click.command(cls=_TrainCommand, epilog=_TRAIN_EPILOG, context_settings={"show_default": True})
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
    help="Resolve and validate the config, print it as YAML, and exit without training.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars (for logs and CI).")
def train(overrides: tuple[str, ...], config_file: str | None, dry_run: bool, no_progress: bool):
    """Train a policy as a GFlowNet sampler over PyMC programs for one env."""
    try:
        config = resolve(list(overrides), config_file)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    if dry_run:
        click.echo(to_yaml(config), nl=False)
        return
    if config.policy.kind == "slot":
        from synthstats.eval.validation import run_validation as run
    else:
        from synthstats.train.run import run

    try:
        summary = run(config, show_progress=not no_progress)
    except UserFacingError as error:
        click.echo(f"synthstats-train: {error}", err=True)
        sys.exit(2)
    if not summary.finished:
        sys.exit(_EXIT_TERMINATED)


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
    lazy_commands={
        "envs": "synthstats.envs.cli:envs",
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
        "train": "synthstats.train.bench:bench_train",
    },
)
def bench() -> None:
    """Benchmarks: judge throughput against a naive baseline, and training throughput."""
