"""JudgePool: score many programs at once on persistent sandboxed workers.

Built on concurrent.futures: one thread per worker carries a program to a free
SandboxedWorker and waits for its verdict, so `submit` returns a Future at once and the
training loop can learn while the judge scores. Extraction, the gate and the score cache
run in the caller's thread (a cache hit costs milliseconds and no worker). A worker that
dies or hangs costs its program a `crashed` or `timeout` score and is restarted for the
next one; queued programs are not lost. Closing the pool (also on Ctrl-C or an exception
in a `with` block) kills every worker and what it started.

    with JudgePool(load_judge_config("default")) as pool:
        pending = pool.score_async(env, completions)   # overlap with learning
        scores = pending.result()                      # in input order
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from synthstats.judge.cache import ScoreCache, score_key
from synthstats.judge.sandbox import JudgeUnavailable, SandboxedWorker
from synthstats.judge.score import Score
from synthstats.judge.scoring import prepare

if TYPE_CHECKING:
    from synthstats.config import JudgeConfig
    from synthstats.envs.base import Env


def default_workers() -> int:
    """The usable cores, shared among the local ranks of a multi-process trainer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, (cores or 1) // max(1, local_ranks))


class JudgePool:
    """Scores (env, completion) pairs on `workers` sandboxed processes.

    workers: None takes judge_cfg.workers, whose 0 means default_workers().
    cache: None opens judge_cfg.cache_path (or the user cache dir) when judge_cfg.cache,
        False disables it, a ScoreCache is used as given.
    compile_seed: a trusted PyTensor compile dir copied into each worker's private one.
    eager: start the workers now, in the background, so that they have imported PyMC by
        the time the first programs arrive (a trainer samples its first batch meanwhile).
    """

    def __init__(
        self,
        judge_cfg: JudgeConfig,
        workers: int | None = None,
        *,
        cache: ScoreCache | bool | None = None,
        compile_seed: Path | None = None,
        eager: bool = True,
    ):
        self.judge_cfg = judge_cfg
        self.workers = workers or judge_cfg.workers or default_workers()
        if cache is None:
            cache = ScoreCache(judge_cfg.cache_path) if judge_cfg.cache else None
        self.cache: ScoreCache | None = cache or None
        self._free: queue.SimpleQueue[SandboxedWorker] = queue.SimpleQueue()
        self._all = [SandboxedWorker(judge_cfg, compile_seed) for _ in range(self.workers)]
        for worker in self._all:
            self._free.put(worker)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="judge")
        self._closed = threading.Event()
        self._finalizer = weakref.finalize(self, _kill_all, self._all)
        if eager:
            for _ in self._all:
                self._executor.submit(self._start_a_worker)

    def submit(self, env: Env, completion: str) -> Future[Score]:
        """A Future of the completion's Score; resolved at once for cache hits and for
        completions that fail before running (no_program, syntax, forbidden)."""
        if self._closed.is_set():
            raise RuntimeError("the judge pool is closed")
        prepared = prepare(completion)
        if isinstance(prepared, Score):
            return _done(prepared)
        key = score_key(env, prepared, self.judge_cfg) if self.cache else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            return _done(hit)
        return self._executor.submit(self._score_on_a_worker, env, prepared, key)

    def score_async(self, env: Env, completions: Sequence[str]) -> Future[list[Score]]:
        """One Future of all the Scores, in input order."""
        return _gather([self.submit(env, completion) for completion in completions])

    def score(self, env: Env, completions: Sequence[str]) -> list[Score]:
        """Blocking: the Scores in input order."""
        return self.score_async(env, completions).result()

    def close(self) -> None:
        """Cancels queued programs, kills every worker, waits for the threads."""
        self._closed.set()
        _kill_all(self._all)  # running programs return at once as `crashed`
        self._executor.shutdown(wait=True, cancel_futures=True)
        for worker in self._all:
            worker.close()
        if self.cache is not None:
            self.cache.close()
        self._finalizer.detach()

    def __enter__(self) -> JudgePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_a_worker(self) -> None:
        worker = self._free.get()
        try:
            if not (self._closed.is_set() or worker.running):
                worker.start()
        except JudgeUnavailable:
            pass  # the first program on this worker retries and reports it
        finally:
            self._free.put(worker)

    def _score_on_a_worker(self, env: Env, source: str, key: str | None) -> Score:
        worker = self._free.get()
        try:
            if self._closed.is_set():
                return Score.failure("crashed", "the judge pool closed before scoring")
            score = worker.score(source, env)
        finally:
            self._free.put(worker)
        if key is not None and not self._closed.is_set():
            self.cache.put(key, env.name, score)
        return score


def _done(score: Score) -> Future[Score]:
    future: Future[Score] = Future()
    future.set_result(score)
    return future


def _gather(futures: list[Future[Score]]) -> Future[list[Score]]:
    gathered: Future[list[Score]] = Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        try:
            gathered.set_result([future.result() for future in futures])
        except BaseException as error:  # a cancelled program, or a worker that cannot start
            gathered.set_exception(error)

    if not futures:
        gathered.set_result([])
    for future in futures:
        future.add_done_callback(one_done)
    return gathered


def _kill_all(workers: list[SandboxedWorker]) -> None:
    for worker in workers:
        worker.kill()
