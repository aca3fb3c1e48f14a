"""Maintainer tools that rebuild the files an env ships; not used at run time.

    python -m synthstats.envs.maintain write-data [NAME ...]        simulated data files
    python -m synthstats.envs.maintain refresh-prompts [NAME ...]   prompts in the SFT JSONL
    python -m synthstats.envs.maintain reference-elpd NAME [...]    ELPD-LOO of the reference

`reference-elpd` prints the number to copy into `reference_elpd` of `specs/NAME.yaml`, using
the judge's default budget: 500 draws after 500 tuning steps, 2 chains, seed 0.
"""

from __future__ import annotations

import json

import click
import numpy as np

from synthstats.envs.catalog import (
    data_path,
    demonstration_path,
    env_names,
    get_env,
    load_spec,
)
from synthstats.envs.simulate import GENERATORS

SAMPLER_SETTINGS = {"draws": 500, "tune": 500, "chains": 2, "target_accept": 0.9, "random_seed": 0}


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


def reference_elpd(name: str) -> tuple[float, float]:
    """ELPD-LOO and its standard error for the env's reference program."""
    import arviz as az
    import pymc as pm

    env = get_env(name)
    namespace = {"data": env.data}
    exec(compile(env.reference_program, f"<{name} reference>", "exec"), namespace)
    with namespace["model"]:
        idata = pm.sample(
            **SAMPLER_SETTINGS,
            cores=1,
            progressbar=False,
            idata_kwargs={"log_likelihood": True},
        )
    loo = az.loo(idata, var_name=env.observed[0])
    return float(loo["elpd_loo"]), float(loo["se"])


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
@click.argument("names", nargs=-1, required=True)
def reference_elpd_command(names: tuple[str, ...]) -> None:
    for name in names:
        elpd, se = reference_elpd(name)
        click.echo(f"{name}: reference_elpd: {elpd:.2f}  (se {se:.2f})")


if __name__ == "__main__":
    main()
