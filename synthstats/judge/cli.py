"""`synthstats score`: score program files against an env with the sandboxed judge.

    synthstats score --env dugongs model.py other.txt
    synthstats score --env dugongs --judge fast --workers 2 --no-cache runs/*.txt --json

A file is a raw completion (thinking, prose and a ```python block) or a bare program.
Failed programs are results (exit 0); only usage errors exit non-zero. The log-reward
shown is at the default reward temperature, for display: the judge itself never applies
a temperature.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from synthstats.judge.pool import JudgePool
from synthstats.judge.sandbox import JudgeUnavailable
from synthstats.judge.score import Score
from synthstats.progress import gather


@click.command("score")
@click.option("--env", "env_name", required=True, help="The env whose data the programs model.")
@click.option(
    "--judge",
    "judge_name",
    default="default",
    show_default=True,
    help="A configs/judge/ NAME: the NUTS budget and sandbox limits.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Sandboxed worker processes [default: the judge config's, 0 there = usable cores].",
)
@click.option("--no-cache", is_flag=True, help="Score every program, bypassing the score cache.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, in input order.")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def score(
    env_name: str,
    judge_name: str,
    workers: int | None,
    no_cache: bool,
    as_json: bool,
    files: tuple[Path, ...],
) -> None:
    """Score PyMC programs (FILE...) by ELPD-LOO on ENV's data."""
    from synthstats.config import ConfigError, load_judge_config
    from synthstats.envs import get_env

    try:
        env = get_env(env_name)
    except (KeyError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="--env") from None
    try:
        judge_cfg = load_judge_config(judge_name)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--judge") from None
    texts = [as_completion(path.read_text(errors="replace")) for path in files]
    try:
        pool = JudgePool(
            judge_cfg,
            workers=min(workers or judge_cfg.workers or len(texts), len(texts)),
            cache=False if no_cache else None,
            eager=False,  # a file of cache hits or gate failures needs no worker
        )
        with pool:
            futures = [pool.submit(env, text) for text in texts]
            scores = gather(futures, f"scoring on {env.name}", show=len(texts) > 1, unit="file")
    except JudgeUnavailable as error:
        raise click.ClickException(str(error)) from None
    log_rewards = _display_log_rewards(scores, env.reference_elpd)
    for path, result, log_reward in zip(files, scores, log_rewards, strict=True):
        if as_json:
            record = {"file": str(path), **result.to_dict(), "log_reward": log_reward}
            click.echo(json.dumps(record))
        else:
            click.echo(f"{path}: {_describe(result, log_reward)}")


def as_completion(text: str) -> str:
    """A bare program file is taken as the program; anything with a fence as a completion."""
    return text if "```" in text else f"```python\n{text}\n```\n"


def _display_log_rewards(scores: list[Score], reference_elpd: float | None) -> list[float | None]:
    """log R at the default reward temperature (the objective's transform, for display)."""
    if reference_elpd is None:
        return [None] * len(scores)
    from synthstats.config import RewardConfig
    from synthstats.objectives.reward import tempered_log_reward

    elpd = [score.elpd_loo if score.ok else math.nan for score in scores]
    ok = [score.ok for score in scores]
    rewards = tempered_log_reward(
        elpd, ok, reference_elpd=reference_elpd, step=0, cfg=RewardConfig()
    )
    return [float(value) for value in rewards]


def _describe(result: Score, log_reward: float | None) -> str:
    timing = f"{result.seconds:.1f} s" + (", cached" if result.cached else "")
    if not result.ok:
        return f"{result.error_kind}: {result.message} ({timing})"
    reward = f" log_reward={log_reward:.2f}" if log_reward is not None else ""
    return (
        f"elpd_loo={result.elpd_loo:.2f} se={_shown(result.se)} p_loo={_shown(result.p_loo)} "
        f"pareto_k_max={_shown(result.pareto_k_max)} divergences={result.divergences}"
        f"{reward} ({timing})"
    )


def _shown(value: float | None) -> str:
    """arviz may return no finite diagnostic for a valid fit; show that rather than crash."""
    return "n/a" if value is None else f"{value:.2f}"
