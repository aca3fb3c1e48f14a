"""`synthstats envs`: list the envs, or show one env's prompt (`--json` for everything)."""

from __future__ import annotations

import json

import click

from synthstats.envs.base import Env
from synthstats.envs.catalog import env_names, get_env


def env_record(env: Env) -> dict:
    """Everything a person or a script needs to see about an env, JSON-ready."""
    return {
        "name": env.name,
        "description": env.description,
        "variables": dict(env.variables),
        "observed": list(env.observed),
        "data": {name: values.tolist() for name, values in env.data.items()},
        "data_hash": env.data_hash(),
        "prompt": env.render_prompt(),
        "reference_program": env.reference_program,
        "reference_elpd": env.reference_elpd,
        "demonstrations": [record["completion"] for record in env.demonstrations()],
    }


def _load(name: str) -> Env:
    try:
        return get_env(name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="NAME") from None


@click.group(invoke_without_command=True)
@click.pass_context
def envs(context: click.Context) -> None:
    """List the environments (name, number of observations, observed variable)."""
    if context.invoked_subcommand is not None:
        return
    rows = [("name", "observations", "observed")]
    for name in env_names():
        env = get_env(name)
        count = sum(env.data[variable].size for variable in env.observed)
        rows.append((name, str(count), ", ".join(env.observed)))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for name, count, observed in rows:
        click.echo(f"{name:<{widths[0]}}  {count:>{widths[1]}}  {observed}")


@envs.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with everything.")
def show(name: str, as_json: bool) -> None:
    """Print the chat prompt of env NAME."""
    env = _load(name)
    if as_json:
        click.echo(json.dumps(env_record(env), indent=2))
        return
    for message in env.render_prompt():
        click.echo(f"--- {message['role']} ---")
        click.echo(message["content"])
