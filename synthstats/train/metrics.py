"""Metrics sink: metrics.jsonl in the run directory always, console lines, optionally W&B.

Messages (warnings, progress notes) go through Python logging; per-step numbers go here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthstats.config import Config, LoggingConfig
from synthstats.errors import UserFacingError

log = logging.getLogger("synthstats.train")

_CONSOLE_KEYS = ("loss", "log_z", "reward_mean", "valid_rate", "elpd_max", "wait_seconds")


class LoggingSetupError(UserFacingError, RuntimeError):
    """A metrics backend that cannot start; raised before the first step."""


class MetricsLogger:
    """One line per step into metrics.jsonl; console and W&B as configured."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, *, resume_after: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.cfg = cfg
        if resume_after is not None:
            _truncate_after(self.path, resume_after)
        self._file = self.path.open("a")
        self._wandb = None

    def start_wandb(self, config: Config, run_dir: Path) -> None:
        """Fails at start, with the reason, rather than mid-run."""
        try:
            import wandb
        except ImportError as error:
            raise LoggingSetupError(
                "logging=wandb needs the wandb package: pip install wandb"
            ) from error
        try:
            self._wandb = wandb.init(
                project=self.cfg.project,
                mode=self.cfg.wandb_mode,
                dir=str(run_dir),
                config=_plain(config),
                name=run_dir.name,
                resume="allow",
            )
        except Exception as error:  # wandb raises many types for login and network trouble
            raise LoggingSetupError(
                f"logging=wandb could not start ({error}). Run `wandb login`, or set "
                "WANDB_MODE=offline (or logging.wandb_mode=offline) to log without a network."
            ) from error

    def rewind(self, step: int) -> None:
        """Drop lines after `step`: the loop reloaded that checkpoint and logs them again."""
        self._file.close()
        _truncate_after(self.path, step)
        self._file = self.path.open("a")

    def log(self, metrics: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(_finite(metrics)) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=int(metrics["step"]))
        if self.cfg.backend != "jsonl" or int(metrics["step"]) % self.cfg.every == 0:
            shown = " ".join(
                f"{key}={metrics[key]:.4g}" for key in _CONSOLE_KEYS if metrics.get(key) is not None
            )
            log.info("step %d %s", metrics["step"], shown)

    def log_programs(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """A table of sampled programs with their scores (W&B only)."""
        if self._wandb is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        self._wandb.log({"programs": table}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _finite(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: write null instead."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in metrics.items()
    }


def _plain(config: Config) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)


def _truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint being resumed, so no step appears twice."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))
