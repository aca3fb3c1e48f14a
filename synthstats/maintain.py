"""Maintainer tools that rebuild the files an env ships; not used at run time.

    python -m synthstats.maintain write-data [NAME ...]        simulated data files
    python -m synthstats.maintain refresh-prompts [NAME ...]   prompts in the SFT JSONL
    python -m synthstats.maintain reference-elpd [NAME ...]   ELPD-LOO of the reference
    python -m synthstats.maintain score-space ENV... [--judge J] [--workers N]  space ELPDs

`reference-elpd` scores the reference program with the real judge at its default config
(configs/judge/default.yaml) and prints it; `--write` stores it as `reference_elpd` in
`specs/NAME.yaml`. `score-space` re-scores every program of an env's program space with the
real judge and rewrites `synthstats/envs/spaces/scores/ENV.json`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence

import click
import numpy as np

from synthstats.envs.catalog import (
    data_path,
    demonstration_path,
    env_names,
    get_env,
    load_spec,
    spec_path,
)
from synthstats.envs.simulate import GENERATORS
from synthstats.judge.score import Score


def data_file_text(data: dict[str, np.ndarray], truth: dict) -> str:
    """One array per line, so a diff shows which variable changed."""
    arrays = ",\n".join(
        f'    "{name}": {json.dumps(values.tolist())}' for name, values in data.items()
    )
    return f'{{\n  "data": {{\n{arrays}\n  }},\n  "truth": {json.dumps(truth)}\n}}\n'


def write_data(name: str) -> None:
    """Re-run the env's generator with the seed in its spec and write its data file."""
    simulation = GENERATORS[name](load_spec(name)["seed"])
    data_path(name).write_text(data_file_text(simulation.data, simulation.truth))


def refresh_prompts(name: str) -> None:
    """Rewrite the prompt of every demonstration with the env's current `render_prompt()`."""
    env = get_env(name)
    prompt = env.render_prompt()
    records = [{"prompt": prompt, "completion": r["completion"]} for r in env.demonstrations()]
    lines = (json.dumps(record) for record in records)
    demonstration_path(name).write_text("".join(line + "\n" for line in lines))


def score_references(names: Sequence[str], workers: int) -> dict[str, Score]:
    """The real judge's Score of each env's reference program, at the default judge config."""
    from synthstats.config import load_judge_config
    from synthstats.judge.pool import JudgePool

    envs = [get_env(name) for name in names]
    with JudgePool(load_judge_config("default"), workers=workers, cache=False) as pool:
        futures = [pool.submit(env, f"```python\n{env.reference_program}```") for env in envs]
        return {env.name: future.result() for env, future in zip(envs, futures, strict=True)}


def store_reference_elpd(name: str, elpd: float) -> None:
    """Rewrite the `reference_elpd:` line of the env's spec, leaving the rest as written."""
    path = spec_path(name)
    text, count = re.subn(
        r"^reference_elpd:.*$", f"reference_elpd: {elpd:.2f}", path.read_text(), flags=re.M
    )
    if count != 1:
        raise click.ClickException(f"{path}: expected one reference_elpd line, found {count}")
    path.write_text(text)


@click.group()
def main() -> None:
    """Rebuild the files the envs ship."""


@main.command("write-data")
@click.argument("names", nargs=-1)
def write_data_command(names: tuple[str, ...]) -> None:
    for name in names or tuple(GENERATORS):
        write_data(name)
        click.echo(f"wrote {data_path(name)}")


@main.command("refresh-prompts")
@click.argument("names", nargs=-1)
def refresh_prompts_command(names: tuple[str, ...]) -> None:
    for name in names or env_names():
        refresh_prompts(name)
        click.echo(f"wrote {demonstration_path(name)}")


@main.command("reference-elpd")
@click.argument("names", nargs=-1)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--write", is_flag=True, help="Store each ELPD in its spec's reference_elpd line.")
def reference_elpd_command(names: tuple[str, ...], workers: int, write: bool) -> None:
    for name, score in score_references(names or env_names(), workers).items():
        verdict = f"reference_elpd: {score.elpd_loo:.2f}" if score.ok else "FAILED"
        click.echo(f"{name}: {verdict}  {json.dumps(score.to_dict())}")
        if write and score.ok:
            store_reference_elpd(name, score.elpd_loo)


@main.command("score-space")
@click.argument("env_names", nargs=-1, required=True)
@click.option("--judge", default="default", show_default=True, help="configs/judge/ option")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
def score_space_command(env_names: tuple[str, ...], judge: str, workers: int) -> None:
    """Re-score program spaces with the real judge and rewrite their shipped scores files."""
    from synthstats.config import resolve
    from synthstats.envs.spaces import get_space
    from synthstats.judge.space_scores import score_programs, write_scores

    for env_name in env_names:
        space = get_space(env_name)
        env = get_env(env_name)
        judge_cfg = resolve([f"env={env_name}", f"judge={judge}"]).judge
        start = time.perf_counter()
        scores = score_programs(
            space, env, judge_cfg, space.paths(), progress=click.echo, workers=workers
        )
        path = write_scores(space, env, judge_cfg, scores)
        click.echo(f"wrote {path} ({len(scores)} programs, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
