"""`synthstats bench judge`: the JudgePool against a fresh process per program.

    synthstats bench judge --env dugongs --programs 8 --json

Scores N distinct valid programs (the env's demonstrations) two ways in one run, both
starting from a copy of the same PyTensor compile cache: (a) naive, one fresh Python
process per program that imports PyMC, samples with the judge's budget and computes LOO,
one at a time; (b) the JudgePool with an empty score cache, worker start-up included.
Then the median cost of a cache hit. A benchmark, not a timed test.

The starting compile cache is made by a trusted pass before either clock starts:
`warm` (the default) compiles the benchmarked programs themselves, so both paths measure
the judge rather than gcc; `base` compiles only the judge's warm-up model, so both also
pay gcc for each new model structure, as a run's first programs of a new shape do.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click


@click.command("judge")
@click.option("--env", "env_name", default="dugongs", show_default=True)
@click.option("--programs", "count", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--judge", "judge_name", default="default", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="[default: usable cores]")
@click.option(
    "--compile-cache",
    type=click.Choice(["warm", "base"]),
    default="warm",
    show_default=True,
    help="Starting compile cache: the programs' models compiled, or only the warm-up's.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the numbers.")
def bench_judge(
    env_name: str,
    count: int,
    judge_name: str,
    workers: int | None,
    compile_cache: str,
    as_json: bool,
) -> None:
    """Programs per minute: JudgePool vs a fresh process per program, and cache-hit cost."""
    from synthstats.config import ConfigError, load_judge_config
    from synthstats.envs import get_env

    try:
        env = get_env(env_name)
        judge_cfg = load_judge_config(judge_name)
    except (ValueError, ConfigError) as error:
        raise click.UsageError(str(error)) from None
    completions = _distinct_programs(env, count)
    if not completions:
        raise click.UsageError(f"env {env_name!r} ships no demonstrations to benchmark")
    result = run_bench(
        env, judge_cfg, completions, workers, compile_cache=compile_cache, progress=not as_json
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['programs']} programs of {env_name}, {result['workers']} workers "
        f"({result['cores']} cores), judge {judge_name}, {compile_cache} compile cache:\n"
        f"  naive (process per program): {result['naive_per_min']:.2f} programs/min\n"
        f"  JudgePool:                   {result['pool_per_min']:.2f} programs/min\n"
        f"  ratio: {result['ratio']:.2f}x   cache hit: {result['cache_hit_ms']:.2f} ms (median)"
    )


def run_bench(
    env,
    judge_cfg,
    completions: list[str],
    workers: int | None,
    *,
    compile_cache: str = "warm",
    progress: bool = False,
) -> dict:
    """The benchmark's numbers as a dict (see the module docstring)."""
    from synthstats.envs.base import Env
    from synthstats.judge.cache import ScoreCache
    from synthstats.judge.extract import extract_program
    from synthstats.judge.pool import JudgePool, default_workers
    from synthstats.judge.runner import WARM_UP_DATA, WARM_UP_PROGRAM
    from synthstats.judge.unsandboxed import score_trusted

    say = click.echo if progress else (lambda message: None)
    workers = workers or judge_cfg.workers or default_workers()
    sources = [extract_program(completion) for completion in completions]
    with tempfile.TemporaryDirectory(prefix="synthstats-bench-") as scratch:
        root = Path(scratch)
        warm_up_env = Env(
            name="warm-up",
            description="",
            variables={"y": ""},
            observed=("y",),
            data=WARM_UP_DATA,
            reference_program=WARM_UP_PROGRAM,
        )
        trusted = [(warm_up_env, WARM_UP_PROGRAM)]
        if compile_cache == "warm":
            trusted += [(env, source) for source in sources]
        say(f"compiling the shared starting compile cache ({compile_cache})...")
        score_trusted(trusted, judge_cfg, root / "seed")
        shutil.copytree(root / "seed", root / "naive")

        say(f"naive: {len(sources)} fresh processes, one at a time...")
        start = time.perf_counter()
        naive = [score_trusted([(env, source)], judge_cfg, root / "naive")[0] for source in sources]
        naive_seconds = time.perf_counter() - start

        say(f"JudgePool: {workers} workers, empty score cache...")
        cache = ScoreCache(root / "scores.sqlite")
        start = time.perf_counter()
        with JudgePool(judge_cfg, workers, cache=cache, compile_seed=root / "seed") as pool:
            scores = pool.score(env, completions)
            pool_seconds = time.perf_counter() - start
            hits = []
            for _ in range(5):
                for completion in completions:
                    began = time.perf_counter()
                    pool.submit(env, completion).result()
                    hits.append(time.perf_counter() - began)
    pairs = list(zip(naive, scores, strict=True))
    failed = [number for number, (a, b) in enumerate(pairs) if not (a["ok"] and b.ok)]
    if failed:
        say(f"warning: programs {failed} did not score ok in both runs")
    differences = [abs(a["elpd_loo"] - b.elpd_loo) for a, b in pairs if a["ok"] and b.ok]
    naive_per_min = 60 * len(sources) / naive_seconds
    pool_per_min = 60 * len(sources) / pool_seconds
    return {
        "naive_per_min": naive_per_min,
        "pool_per_min": pool_per_min,
        "ratio": pool_per_min / naive_per_min,
        "cache_hit_ms": 1000 * statistics.median(hits),
        "programs": len(sources),
        "workers": workers,
        "compile_cache": compile_cache,
        "cores": len(os.sched_getaffinity(0)),
        "not_ok": failed,
        # naive and pool sample with the same seed: their ELPDs should agree
        "max_elpd_difference": max(differences, default=None),
    }


def _distinct_programs(env, count: int) -> list[str]:
    """Up to `count` demonstrations with distinct programs, in file order."""
    from synthstats.judge.cache import normalise_program
    from synthstats.judge.extract import extract_program

    seen, completions = set(), []
    for record in env.demonstrations():
        source = extract_program(record["completion"])
        if source is None or normalise_program(source) in seen:
            continue
        seen.add(normalise_program(source))
        completions.append(record["completion"])
        if len(completions) == count:
            break
    return completions
