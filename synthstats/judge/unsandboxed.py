"""Score TRUSTED programs in a plain Python process: no gate, no sandbox, no fork.

Two uses, never for generated code: the benchmark's naive baseline (a fresh process per
program that imports PyMC, samples and computes LOO), and warming a PyTensor compile dir
with trusted programs (reference programs, demonstrations) that workers then copy as
their starting cache, so their first programs skip the compiler.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synthstats.config import JudgeConfig
    from synthstats.envs.base import Env


def score_trusted(
    programs: Sequence[tuple[Env, str]], judge_cfg: JudgeConfig, compile_dir: Path
) -> list[dict[str, Any]]:
    """Score fields for each (env, program source) in one fresh process compiling into
    compile_dir (created if missing)."""
    compile_dir.mkdir(parents=True, exist_ok=True)
    budget = judge_cfg.budget()
    requests = [
        {
            "source": source,
            "data": dict(env.data),
            "observed": env.observed,
            "budget": budget,
            "reference_elpd": env.reference_elpd,
        }
        for env, source in programs
    ]
    environment = {
        **os.environ,
        "PYTENSOR_FLAGS": f"base_compiledir={compile_dir}",
        "PYTHONHASHSEED": "0",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "synthstats.judge.unsandboxed"],
        input=pickle.dumps(requests),
        capture_output=True,
        env=environment,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"trusted scoring failed: {completed.stderr.decode()[-2000:]}")
    return json.loads(completed.stdout.decode().strip().splitlines()[-1])


def _main() -> None:
    import time
    import warnings

    warnings.simplefilter("ignore")
    from synthstats.judge.runner import Budget, score_source

    results = []
    for request in pickle.loads(sys.stdin.buffer.read()):
        budget = Budget(**request["budget"])
        start = time.perf_counter()
        result = score_source(
            request["source"],
            request["data"],
            tuple(request["observed"]),
            budget,
            request["reference_elpd"],
        )
        results.append({**result, "seconds": time.perf_counter() - start})
    print(json.dumps(results))


if __name__ == "__main__":
    _main()
