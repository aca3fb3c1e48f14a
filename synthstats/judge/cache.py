"""A persistent SQLite cache of scores: GFlowNet sampling and replay repeat programs often.

Keyed by env, a hash of the env's data, the normalised program text, every judge setting
that can change a score, and the PyMC / PyTensor / arviz versions. It stores scores, never
tempered rewards. WAL mode and a busy timeout make it safe for several ranks on one
machine; a corrupt or unreadable file is reported once and rebuilt, never fatal. Timeouts
and crashes are not stored: they depend on the machine's load, not only on the program.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sqlite3
import threading
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from synthstats.judge.score import Score

if TYPE_CHECKING:
    from synthstats.config import JudgeConfig
    from synthstats.envs.base import Env

# Bump when the judge's scoring changes, so old scores are not served for new rules.
JUDGE_VERSION = 2  # 2: two-phase scoring (describe, validate, rebuild); LOO refits
# JudgeConfig fields that do not change a score.
_NOT_IN_KEY = frozenset({"name", "workers", "cache", "cache_path", "sandbox"})
_UNCACHED_KINDS = frozenset({"timeout", "crashed"})
_BUSY_TIMEOUT_MS = 10_000


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "synthstats" / "judge-scores.sqlite"


def normalise_program(source: str) -> str:
    """Line endings, trailing spaces and blank edges do not change a program."""
    lines = [line.rstrip() for line in source.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def score_key(env: Env, source: str, judge_cfg: JudgeConfig) -> str:
    settings = {
        field.name: getattr(judge_cfg, field.name)
        for field in dataclasses.fields(judge_cfg)
        if field.name not in _NOT_IN_KEY
    }
    material = {
        "env": env.name,
        "data": env.data_hash(),
        "observed": list(env.observed),
        "program": normalise_program(source),
        "judge": settings,
        "judge_version": JUDGE_VERSION,
        "versions": _library_versions(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class ScoreCache:
    """get/put of Scores by key; thread-safe within a process, WAL across processes."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._reported = False
        with self._lock:
            self._open()

    def get(self, key: str) -> Score | None:
        with self._lock:
            row = self._run("SELECT score FROM scores WHERE key = ?", (key,), fetch=True)
        if row is None:
            return None
        try:
            return dataclasses.replace(Score.from_dict(json.loads(row[0])), cached=True)
        except (ValueError, TypeError):
            return None  # a row this version cannot read is a miss

    def put(self, key: str, env_name: str, score: Score) -> None:
        if score.error_kind in _UNCACHED_KINDS:
            return
        payload = json.dumps(dataclasses.replace(score, cached=False).to_dict())
        with self._lock:
            self._run(
                "INSERT OR REPLACE INTO scores (key, env, score) VALUES (?, ?, ?)",
                (key, env_name, payload),
            )

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _run(self, sql: str, parameters: tuple, fetch: bool = False):
        """One statement; on a broken database, report once, rebuild, retry once."""
        for attempt in range(2):
            if self._connection is None:
                return None
            try:
                cursor = self._connection.execute(sql, parameters)
                if fetch:
                    return cursor.fetchone()
                self._connection.commit()
                return None
            except sqlite3.OperationalError as error:
                if "locked" in str(error) or "busy" in str(error):
                    return None  # another rank holds it past the busy timeout: skip
                self._rebuild(error) if attempt == 0 else self._disable(error)
            except sqlite3.DatabaseError as error:
                self._rebuild(error) if attempt == 0 else self._disable(error)
        return None

    def _open(self) -> None:
        try:
            self._connection = self._connect()
        except (sqlite3.DatabaseError, OSError) as error:
            self._rebuild(error)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS scores "
                "(key TEXT PRIMARY KEY, env TEXT NOT NULL, score TEXT NOT NULL)"
            )
            connection.commit()
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return connection

    def _rebuild(self, error: Exception) -> None:
        self._report(f"score cache {self.path} is unreadable ({error}); rebuilding it")
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        try:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._connection = self._connect()
        except (sqlite3.DatabaseError, OSError) as second:
            self._disable(second)

    def _disable(self, error: Exception) -> None:
        self._report(f"score cache {self.path} disabled ({error}); scoring without it")
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def _report(self, message: str) -> None:
        if not self._reported:
            self._reported = True
            warnings.warn(message, RuntimeWarning, stacklevel=4)


@functools.cache
def _library_versions() -> dict[str, str]:
    return {name: version(name) for name in ("pymc", "pytensor", "arviz")}
