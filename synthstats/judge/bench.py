"""`synthstats bench judge`: the JudgePool against a fresh process per program, and what
a program costs the judge when its model structure is new and when it is warm.

    synthstats bench judge --env dugongs --programs 8 --json
    synthstats bench judge-compile --envs dugongs,eight_schools,surgical,peregrines

Scores N distinct valid programs (the env's demonstrations) two ways in one run, both
starting from a copy of the same PyTensor compile cache: (a) naive, one fresh Python
process per program that imports PyMC, samples with the judge's budget and computes LOO,
one at a time; (b) the JudgePool with an empty score cache, worker start-up included.
Then the median cost of a cache hit, and the structure costs below for the same programs.
A benchmark, not a timed test.

Structure costs: each program in a fresh process with an empty compile dir (one core),
after the judge's warm-up (a worker's start-up, not counted), scored twice: the first
time its structure is new to the compiler, the second time it is warm. Reported per pass:
programs per minute, median and p90 seconds, and the shares of compiling, sampling (LOO
refits included) and LOO. `judge-compile` runs this for PyTensor's per-op linker (the
judge before `judge.compile`) and the judge's whole-function one, in one run.

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
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np


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
    from synthstats.judge.extract import extract_program

    completions = _distinct_programs(env, count)
    if not completions:
        raise click.UsageError(f"env {env_name!r} ships no demonstrations to benchmark")
    say = _progress(as_json)
    result = run_bench(
        env, judge_cfg, completions, workers, compile_cache=compile_cache, progress=say
    )
    say(f"structure costs: {len(completions)} fresh processes, one at a time...")
    sources = [extract_program(completion) for completion in completions]
    costs = structure_costs([(env, source) for source in sources], judge_cfg, progress=say)
    result["structures"] = summarise_costs(costs)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['programs']} programs of {env_name}, {result['workers']} workers "
        f"({result['cores']} cores), judge {judge_name}, {compile_cache} compile cache:\n"
        f"  naive (process per program): {result['naive_per_min']:.2f} programs/min\n"
        f"  JudgePool:                   {result['pool_per_min']:.2f} programs/min\n"
        f"  ratio: {result['ratio']:.2f}x   cache hit: {result['cache_hit_ms']:.2f} ms (median)\n"
        f"  a program's own cost: {result['naive_program_s']:.2f} s in a fresh process, "
        f"{result['pool_program_s']:.2f} s on a worker\n"
        f"  on top: {result['naive_process_s']:.2f} s a program for its fresh process; "
        f"{result['pool_startup_and_idle_s']:.2f} s in all for the pool's start-up and idle "
        "cores\n"
        f"one program in a fresh process, one core, compile {judge_cfg.compile}:\n"
        + _cost_lines(result["structures"])
    )


@click.command("judge-compile")
@click.option(
    "--envs",
    default="dugongs,eight_schools,surgical,peregrines",
    show_default=True,
    help="Comma-separated envs whose reference and demonstrations are the programs.",
)
@click.option(
    "--programs", "count", type=click.IntRange(min=1), default=None, help="[default: all]"
)
@click.option("--judge", "judge_name", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the numbers.")
def bench_judge_compile(envs: str, count: int | None, judge_name: str, as_json: bool) -> None:
    """New-structure cost per program: PyTensor's per-op linker vs the judge's."""
    import dataclasses

    from synthstats.config import ConfigError, load_judge_config
    from synthstats.envs import get_env

    try:
        chosen = [get_env(name.strip()) for name in envs.split(",") if name.strip()]
        judge_cfg = load_judge_config(judge_name)
    except (ValueError, ConfigError) as error:
        raise click.UsageError(str(error)) from None
    programs = distinct_reference_and_demonstrations(chosen)[:count]
    say = _progress(as_json)
    costs = {}
    for mode in ("per_op", "whole_function"):
        say(f"{mode}: {len(programs)} programs, a fresh process each...")
        costs[mode] = structure_costs(
            programs, dataclasses.replace(judge_cfg, compile=mode), progress=say
        )
    result = {mode: summarise_costs(rows) for mode, rows in costs.items()}
    before, after = result["per_op"]["new"], result["whole_function"]["new"]
    result["ratio_median_new"] = before["median_s"] / after["median_s"]
    result["elpd"] = compare_elpds(costs["per_op"], costs["whole_function"])
    result["programs"] = len(programs)
    if as_json:
        click.echo(json.dumps(result))
        return
    for mode in ("per_op", "whole_function"):
        click.echo(f"compile {mode}:\n" + _cost_lines(result[mode]))
    agreement = result["elpd"]
    click.echo(
        f"median cost of a new structure: {result['ratio_median_new']:.2f}x lower\n"
        f"ELPDs: {agreement['within']}/{agreement['compared']} within max(1, 3 MCSE); "
        f"largest difference {agreement['max_difference']:.2f} nats"
    )


def run_bench(
    env,
    judge_cfg,
    completions: list[str],
    workers: int | None,
    *,
    compile_cache: str = "warm",
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """The benchmark's numbers as a dict (see the module docstring)."""
    from synthstats.judge.cache import ScoreCache
    from synthstats.judge.extract import extract_program
    from synthstats.judge.pool import JudgePool, default_workers
    from synthstats.judge.runner import WARM_UP_DATA, WARM_UP_PROGRAM
    from synthstats.judge.unsandboxed import score_trusted

    workers = workers or judge_cfg.workers or default_workers()
    sources = [extract_program(completion) for completion in completions]
    with tempfile.TemporaryDirectory(prefix="synthstats-bench-") as scratch:
        root = Path(scratch)
        warm_up_env = _warm_up_env(WARM_UP_DATA, WARM_UP_PROGRAM)
        trusted = [(warm_up_env, WARM_UP_PROGRAM)]
        if compile_cache == "warm":
            trusted += [(env, source) for source in sources]
        progress(f"compiling the shared starting compile cache ({compile_cache})...")
        score_trusted(trusted, judge_cfg, root / "seed")
        shutil.copytree(root / "seed", root / "naive")

        progress(f"naive: {len(sources)} fresh processes, one at a time...")
        start = time.perf_counter()
        naive = [score_trusted([(env, source)], judge_cfg, root / "naive")[0] for source in sources]
        naive_seconds = time.perf_counter() - start

        progress(f"JudgePool: {workers} workers, empty score cache...")
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
        progress(f"warning: programs {failed} did not score ok in both runs")
    differences = [abs(a["elpd_loo"] - b.elpd_loo) for a, b in pairs if a["ok"] and b.ok]
    naive_per_min = 60 * len(sources) / naive_seconds
    pool_per_min = 60 * len(sources) / pool_seconds
    naive_program_s = sum(result["seconds"] for result in naive) / len(sources)
    pool_program_s = sum(score.seconds for score in scores) / len(sources)
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
        # Where each path's time goes: a program's own cost (in its fresh process once PyMC
        # is imported, or on a worker), and what each pays beyond it: the fresh process,
        # per program; the pool's start-up and its idle cores (a worker with no program
        # left while another finishes), in all.
        "naive_program_s": naive_program_s,
        "naive_process_s": naive_seconds / len(sources) - naive_program_s,
        "pool_program_s": pool_program_s,
        "pool_startup_and_idle_s": pool_seconds - pool_program_s * len(sources) / workers,
    }


def distinct_reference_and_demonstrations(envs) -> list[tuple]:
    """(env, source): each env's reference program, then its distinct demonstrations."""
    from synthstats.judge.cache import normalise_program
    from synthstats.judge.extract import extract_program

    programs = []
    for env in envs:
        seen = set()
        candidates = [env.reference_program]
        candidates += [extract_program(r["completion"]) for r in env.demonstrations()]
        for source in candidates:
            if source is None or normalise_program(source) in seen:
                continue
            seen.add(normalise_program(source))
            programs.append((env, source))
    return programs


def structure_costs(
    programs, judge_cfg, progress: Callable[[str], None] = lambda message: None
) -> list[dict]:
    """For each (env, source): its score fields when new (first) and warm (second), from a
    fresh process with an empty compile dir that runs the judge's warm-up first."""
    from synthstats.judge.runner import WARM_UP_DATA, WARM_UP_PROGRAM
    from synthstats.judge.unsandboxed import score_trusted

    warm_up = (_warm_up_env(WARM_UP_DATA, WARM_UP_PROGRAM), WARM_UP_PROGRAM)
    rows = []
    for number, (env, source) in enumerate(programs):
        with tempfile.TemporaryDirectory(prefix="synthstats-bench-") as scratch:
            try:
                _, new, warm = score_trusted(
                    [warm_up, (env, source), (env, source)], judge_cfg, Path(scratch) / "cc"
                )
            except RuntimeError as error:  # the process died: count it, measure the rest
                new = warm = {"ok": False, "message": str(error)[-500:]}
        rows.append({"env": env.name, "new": new, "warm": warm})
        outcome = f"{new['seconds']:.1f} s new" if new.get("ok") else f"failed: {new['message']}"
        progress(f"  {number + 1}/{len(programs)} {env.name}: {outcome}")
    return rows


def summarise_costs(rows: list[dict]) -> dict:
    """Programs/min, median and p90 seconds, and time shares, for the new and warm passes."""
    summary = {}
    for which in ("new", "warm"):
        scored = [row[which] for row in rows if row[which].get("ok")]
        seconds = [score["seconds"] for score in scored]
        total = sum(seconds)
        summary[which] = {
            "programs": len(scored),
            "failed": len(rows) - len(scored),
            "per_min": 60 * len(seconds) / total if total else 0.0,
            "median_s": statistics.median(seconds) if seconds else float("nan"),
            "p90_s": float(np.percentile(seconds, 90)) if seconds else float("nan"),
            **{
                f"{part}_share": sum(score[f"{part}_seconds"] for score in scored) / total
                if total
                else 0.0
                for part in ("compile", "sampling", "loo")
            },
        }
    return summary


def compare_elpds(before: list[dict], after: list[dict]) -> dict:
    """How many ELPDs agree within max(1, 3 MCSE) (the larger MCSE of the two)."""
    compared = within = 0
    largest = 0.0
    for old, new in zip(before, after, strict=True):
        a, b = old["new"], new["new"]
        if not (a.get("ok") and b.get("ok")):
            continue
        difference = abs(a["elpd_loo"] - b["elpd_loo"])
        tolerance = max(1.0, 3 * max(a.get("mcse_elpd") or 0.0, b.get("mcse_elpd") or 0.0))
        compared += 1
        within += difference <= tolerance
        largest = max(largest, difference)
    return {"compared": compared, "within": within, "max_difference": largest}


def _progress(as_json: bool) -> Callable[[str], None]:
    """Progress lines: on stdout, or on stderr when stdout carries the JSON."""
    return lambda message: click.echo(message, err=as_json)


def _cost_lines(summary: dict) -> str:
    lines = []
    for which in ("new", "warm"):
        part = summary[which]
        lines.append(
            f"  {which} structures: {part['per_min']:.2f} programs/min, median "
            f"{part['median_s']:.1f} s, p90 {part['p90_s']:.1f} s; compile "
            f"{part['compile_share']:.0%}, sampling {part['sampling_share']:.0%}, "
            f"LOO {part['loo_share']:.0%} ({part['programs']} ok, {part['failed']} failed)"
        )
    return "\n".join(lines)


def _warm_up_env(data, program):
    from synthstats.envs.base import Env

    return Env(
        name="warm-up",
        description="",
        variables={"y": ""},
        observed=("y",),
        data=data,
        reference_program=program,
    )


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
