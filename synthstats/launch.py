"""`synthstats launch CONFIG -- [KEY=VALUE ...]`: `accelerate launch` with a packaged config.

CONFIG is a name from accelerate_configs/ (shipped in the wheel as
synthstats/_accelerate_configs/), a short alias (zero2, zero3, zero3_offload, ddp) or a YAML
path, as TRL's `--accelerate_config zero3` resolves its own. Everything after `--` goes to
synthstats-train unchanged:

    synthstats launch zero2 -- policy=hf_qwen3_4b runner.train.batch_size=16
    synthstats launch cpu_2proc -- policy=mock runner.train.steps=2   # two CPU processes
    synthstats launch multi_gpu --num-processes 4 --print-command -- policy=hf_qwen3_0_6b
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

ALIASES = {
    "zero2": "deepspeed_zero2",
    "zero3": "deepspeed_zero3",
    "zero3_offload": "deepspeed_zero3_offload",
    "ddp": "multi_gpu",
}


def accelerate_configs_dir() -> Path:
    """The shipped accelerate configs: inside the wheel, or the repository's folder."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_accelerate_configs", package.parent / "accelerate_configs"):
        if candidate.is_dir():
            return candidate
    raise click.ClickException(f"no accelerate_configs/ folder found next to {package}")


def config_names() -> list[str]:
    return sorted(path.stem for path in accelerate_configs_dir().glob("*.yaml"))


def resolve_accelerate_config(name: str) -> Path:
    """A YAML path as given, else a shipped config by name or alias."""
    given = Path(name).expanduser()
    if given.is_file():
        return given
    stem = name.removesuffix(".yaml")
    path = accelerate_configs_dir() / f"{ALIASES.get(stem, stem)}.yaml"
    if not path.is_file():
        aliases = ", ".join(f"{alias} ({target})" for alias, target in ALIASES.items())
        raise click.BadParameter(
            f"no accelerate config {name!r}; shipped: {', '.join(config_names())}; "
            f"aliases: {aliases}; or give a YAML path",
            param_hint="CONFIG",
        )
    return path


def launch_command(config: Path, overrides: list[str], num_processes: int | None) -> list[str]:
    trainer = shutil.which("synthstats-train") or str(
        Path(sys.executable).with_name("synthstats-train")
    )
    if not Path(trainer).is_file():
        raise click.ClickException("synthstats-train is not installed: pip install synthstats")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if num_processes is None and not config.stem.startswith("cpu_"):
        num_processes = _visible_gpus()
    if num_processes is not None:
        command += ["--num_processes", str(num_processes)]
    return [*command, trainer, *overrides]


def _visible_gpus() -> int | None:
    """The GPUs nvidia-smi lists, else None (the config's own count)."""
    if shutil.which("nvidia-smi") is None:
        return None
    listed = subprocess.run(
        ["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=False
    ).stdout
    count = sum(1 for line in listed.splitlines() if line.strip())
    return count or None


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Shipped configs: cpu_2proc, single_gpu, multi_gpu, deepspeed_zero2, "
    "deepspeed_zero3, deepspeed_zero3_offload, multi_node.",
)
@click.argument("config_name", metavar="CONFIG")
@click.argument("overrides", nargs=-1, metavar="-- [GROUP=OPTION | KEY=VALUE]...")
@click.option(
    "--num-processes",
    type=click.IntRange(min=1),
    default=None,
    help="Processes to start (default: the visible GPUs, or the config's count).",
)
@click.option(
    "--print-command", is_flag=True, help="Print the accelerate command instead of running it."
)
def launch(
    config_name: str, overrides: tuple[str, ...], num_processes: int | None, print_command: bool
) -> None:
    """Run synthstats-train under `accelerate launch` with a shipped accelerate config."""
    command = launch_command(resolve_accelerate_config(config_name), list(overrides), num_processes)
    if print_command:
        click.echo(" ".join(command))
        return
    os.execv(command[0], command)
