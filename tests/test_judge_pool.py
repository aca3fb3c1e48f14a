"""JudgePool and the score cache: order, overlap, hung and dead workers, shutdown, and a
persistent cache that is fast, shared between processes and survives a corrupt file."""

from __future__ import annotations

import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from synthstats.config import JudgeConfig
from synthstats.envs.base import Env
from synthstats.judge.cache import ScoreCache, normalise_program, score_key
from synthstats.judge.extract import extract_program
from synthstats.judge.pool import JudgePool, default_workers
from synthstats.judge.score import Score
from synthstats.judge.unsandboxed import score_trusted

# LOO refits off: these tests are about containment and the pool, not LOO (test_judge_loo.py).
CFG = JudgeConfig(
    name="pool-test", draws=100, tune=100, chains=2, timeout_s=20, cache=False, loo_refits=0
)
PRIOR_SCALES = (5, 6, 7, 8)
AGE = [1, 1.5, 1.5, 1.5, 2.5, 4, 5, 5, 7, 8, 8.5, 9, 9.5, 9.5, 10, 12, 12, 13, 13, 14.5, 15.5]
AGE += [15.5, 16.5, 17, 22.5, 29, 31.5]
LENGTH = [1.80, 1.85, 1.87, 1.77, 2.02, 2.27, 2.15, 2.26, 2.47, 2.19, 2.26, 2.40, 2.39, 2.41]
LENGTH += [2.50, 2.32, 2.32, 2.43, 2.47, 2.56, 2.65, 2.47, 2.64, 2.56, 2.70, 2.72, 2.57]
ENV = Env(
    name="dugongs",
    description="length of dugongs by age",
    variables={"age": "years", "length": "metres"},
    observed=("length",),
    data={"age": np.array(AGE), "length": np.array(LENGTH)},
    reference_program="",
)


def program(prior_scale: float = 5.0) -> str:
    return (
        "```python\nimport pymc as pm\nimport numpy as np\n"
        "with pm.Model() as model:\n"
        f"    a = pm.Normal('a', 0, {prior_scale})\n"
        "    b = pm.HalfNormal('b', 2)\n"
        "    s = pm.HalfNormal('s', 1)\n"
        "    pm.Normal('length', a + b * np.log(data['age']), s, observed=data['length'])\n```\n"
    )


LOOP = "```python\nwhile True:\n    pass\n```\n"


def descendants() -> set[int]:
    return {process.pid for process in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    """A compile dir warmed with the test programs, so workers start warm (and the
    program timeout can stay short on a loaded machine)."""
    path = tmp_path_factory.mktemp("seed") / "pytensor"
    sources = [extract_program(program(scale)) for scale in PRIOR_SCALES]
    score_trusted([(ENV, source) for source in sources], CFG, path)
    return path


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return tmp_path_factory.mktemp("cache") / "scores.sqlite"


@pytest.fixture(scope="module")
def pool(cache_path, seed):
    with JudgePool(CFG, workers=2, cache=ScoreCache(cache_path), compile_seed=seed) as judge:
        yield judge


@pytest.fixture(scope="module")
def first_scores(pool):
    batch = [program(5), program(6), "```python\nimport os\n```\n", "no code", program(5)]
    return batch, pool.score(ENV, batch)


def test_scores_come_back_in_input_order(first_scores):
    _, scores = first_scores
    assert [score.error_kind for score in scores] == [None, None, "forbidden", "no_program", None]
    assert scores[0].elpd_loo != scores[1].elpd_loo  # different priors, different programs
    assert scores[4].elpd_loo == scores[0].elpd_loo


def test_cache_hits_are_fast_and_identical(pool, first_scores):
    batch, scores = first_scores
    timings = []
    for completion, expected in zip(batch[:2], scores[:2], strict=True):
        for _ in range(5):
            start = time.perf_counter()
            hit = pool.submit(ENV, completion).result()
            timings.append(time.perf_counter() - start)
            assert hit.cached
            assert _verdict(hit) == _verdict(expected)
    assert statistics.median(timings) < 0.020


def test_cache_persists_across_pools_without_starting_a_worker(cache_path, first_scores):
    batch, scores = first_scores
    with JudgePool(CFG, workers=1, cache=ScoreCache(cache_path), eager=False) as fresh:
        hit = fresh.submit(ENV, batch[0].replace("\n", "  \n")).result()  # trailing spaces
        assert hit.cached and hit.elpd_loo == scores[0].elpd_loo
        assert not any(worker.running for worker in fresh._all)


def test_a_hung_program_does_not_block_the_others(seed):
    before = descendants()
    start = time.perf_counter()
    with JudgePool(CFG, workers=2, cache=False, compile_seed=seed) as judge:
        hung = judge.submit(ENV, LOOP)
        others = judge.score_async(ENV, [program(5), program(7), program(5)])
        scores = others.result()
        assert all(score.ok for score in scores), scores
        assert hung.result().error_kind == "timeout"
    assert time.perf_counter() - start < CFG.timeout_s + 30  # worker starts included
    assert descendants() <= before


def test_a_dead_worker_is_replaced_and_queued_work_kept(seed):
    before = descendants()
    with JudgePool(CFG, workers=1, cache=False, compile_seed=seed) as judge:
        judge.submit(ENV, program(5)).result()  # started and warm
        hung = judge.submit(ENV, LOOP)
        queued = judge.score_async(ENV, [program(5), program(8)])
        time.sleep(2)
        worker = judge._all[0]
        os.killpg(worker._process.pid, signal.SIGKILL)
        assert hung.result().error_kind == "crashed"
        assert all(score.ok for score in queued.result())
    assert descendants() <= before


def test_an_exception_in_the_caller_leaves_no_processes():
    before = descendants()
    with (
        pytest.raises(RuntimeError, match="caller failed"),
        JudgePool(CFG, 2, cache=False) as judge,
    ):
        judge.score_async(ENV, [LOOP, LOOP, LOOP])
        time.sleep(3)
        raise RuntimeError("caller failed")
    assert descendants() <= before


@pytest.fixture
def interactive_sigint():
    """A shell that starts pytest in the background ignores SIGINT, and Python then never
    raises KeyboardInterrupt: restore the interactive behaviour the Ctrl-C test is about."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_leaves_no_processes(interactive_sigint):
    before = descendants()
    timer = threading.Timer(4, os.kill, (os.getpid(), signal.SIGINT))
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), JudgePool(CFG, 2, cache=False) as judge:
        timer.start()
        judge.score(ENV, [LOOP, LOOP, LOOP, LOOP])
    timer.cancel()
    assert time.perf_counter() - start < CFG.timeout_s
    assert descendants() <= before


def test_cache_key_follows_data_settings_and_program_but_not_whitespace():
    source = program(5).split("\n", 1)[1].rsplit("```", 1)[0]
    key = score_key(ENV, source, CFG)
    assert score_key(ENV, "\n" + source.replace("\n", "   \r\n") + "\n\n", CFG) == key
    assert normalise_program(" x = 1 \n") == " x = 1"
    assert score_key(ENV, source.replace("5", "6"), CFG) != key
    assert score_key(ENV, source, dataclasses.replace(CFG, draws=101)) != key
    assert score_key(ENV, source, dataclasses.replace(CFG, workers=3, sandbox="none")) == key
    shifted = Env(**{**vars(ENV), "data": {**ENV.data, "length": ENV.data["length"] + 1}})
    assert score_key(shifted, source, CFG) != key


def test_timeouts_and_crashes_are_not_cached(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    for kind in ("timeout", "crashed", "runtime"):
        cache.put(kind, "dugongs", Score.failure(kind, "x"))
    assert cache.get("timeout") is None and cache.get("crashed") is None
    assert cache.get("runtime").error_kind == "runtime"


def test_a_corrupt_cache_is_reported_once_and_rebuilt(tmp_path):
    path = tmp_path / "scores.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        cache = ScoreCache(path)
    cache.put("k", "dugongs", Score(ok=True, elpd_loo=1.5))
    assert cache.get("k").elpd_loo == 1.5


def test_an_unusable_cache_location_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning):
        cache = ScoreCache(blocker / "scores.sqlite")  # its folder is a file
    cache.put("k", "dugongs", Score(ok=True, elpd_loo=1.5))
    assert cache.get("k") is None


def test_concurrent_writers_in_several_processes(tmp_path):
    path = tmp_path / "scores.sqlite"
    writer = (
        "import sys\n"
        "from synthstats.judge.cache import ScoreCache\n"
        "from synthstats.judge.score import Score\n"
        "cache = ScoreCache(sys.argv[1])\n"
        "for i in range(150):\n"
        "    cache.put(f'{sys.argv[2]}-{i}', 'dugongs', Score(ok=True, elpd_loo=float(i)))\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", writer, str(path), name], stderr=subprocess.PIPE)
        for name in ("a", "b", "c")
    ]
    for process in writers:
        assert process.wait(timeout=120) == 0, process.stderr.read()
        process.stderr.close()
    cache = ScoreCache(path)
    assert all(cache.get(f"{name}-{i}") is not None for name in "abc" for i in range(150))


def test_default_workers_shares_the_cores_among_local_ranks(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
    assert default_workers() == 1


def _verdict(score):
    """A score without how long it took to compute, nor whether it came from the cache."""
    timings = ("seconds", "compile_seconds", "sampling_seconds", "loo_seconds")
    return dataclasses.replace(score, cached=False, **dict.fromkeys(timings, 0.0))
