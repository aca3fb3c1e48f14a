"""Metrics sink: metrics.jsonl in the run directory, console lines, optionally W&B.

Messages (warnings, progress notes) go through Python logging; per-step numbers go here.
logging=console prints lines only; jsonl also keeps every step in metrics.jsonl (what
`synthstats eval` and a resume read); wandb adds Weights & Biases. Console lines and W&B
points come every `logging.every` steps.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthstats.config import Config, LoggingConfig
from synthstats.errors import UserFacingError

log = logging.getLogger("synthstats.train")

_CONSOLE_KEYS = ("loss", "log_z", "reward_mean", "valid_rate", "elpd_max", "wait_seconds")
# The W&B run id of a run directory: resume= continues the same W&B run.
WANDB_ID_FILE = "wandb_run_id"
PROGRAM_COLUMNS = ("program", "ok", "error_kind", "elpd", "log_reward")


class LoggingSetupError(UserFacingError, RuntimeError):
    """A metrics backend that cannot start; raised before the first step."""


class MetricsLogger:
    """Per-step metrics into metrics.jsonl, console lines and W&B, as configured."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, *, resume_after: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.cfg = cfg
        self._file = None
        if cfg.backend != "console":
            if resume_after is not None:
                _truncate_after(self.path, resume_after)
            self._file = self.path.open("a")
        self._wandb = None

    def start_wandb(self, config: Config, run_dir: Path) -> None:
        """Fails at start, with the reason, rather than mid-run. The run id is kept in the
        run directory, so a resumed run continues the same W&B run."""
        try:
            import wandb
        except ImportError as error:
            raise LoggingSetupError(
                "logging=wandb needs the wandb package: pip install wandb"
            ) from error
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        try:
            self._wandb = wandb.init(
                project=self.cfg.project,
                entity=self.cfg.wandb_entity,
                group=self.cfg.wandb_group,
                tags=list(self.cfg.wandb_tags) or None,
                mode=self.cfg.wandb_mode,
                dir=str(run_dir),
                config=_plain(config),
                name=run_dir.name,
                id=run_id,
                resume="allow",
            )
        except Exception as error:  # wandb raises many types for login and network trouble
            raise LoggingSetupError(
                f"logging=wandb could not start ({error}). Run `wandb login`, or set "
                "WANDB_MODE=offline (or logging.wandb_mode=offline) to log without a network."
            ) from error
        id_file.write_text(run_id + "\n")

    def rewind(self, step: int) -> None:
        """Drop lines after `step`: the loop reloaded that checkpoint and logs them again."""
        self._file.close()
        _truncate_after(self.path, step)
        self._file = self.path.open("a")

    def log(self, metrics: Mapping[str, Any]) -> None:
        step = int(metrics["step"])
        if self._file is not None:
            self._file.write(json.dumps(_finite(metrics)) + "\n")
            self._file.flush()
        if step % self.cfg.every != 0:
            return
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)
        shown = " ".join(
            f"{key}={metrics[key]:.4g}" for key in _CONSOLE_KEYS if metrics.get(key) is not None
        )
        log.info("step %d %s", step, shown)

    def wants_programs(self, step: int) -> bool:
        every = self.cfg.programs_every
        return self._wandb is not None and every > 0 and step % every == 0

    def log_programs(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """A W&B table of sampled programs with their scores (PROGRAM_COLUMNS)."""
        if self._wandb is None or not rows:
            return
        import wandb

        table = wandb.Table(
            columns=list(PROGRAM_COLUMNS),
            data=[[row.get(column) for column in PROGRAM_COLUMNS] for row in rows],
        )
        self._wandb.log({"programs": table}, step=step)

    def log_summary(self, values: Mapping[str, Any], images: Sequence[Path] = ()) -> None:
        """A job's final numbers (a report) and plots, into the W&B run's summary."""
        if self._wandb is None:
            return
        import wandb

        for key, value in _flat(values).items():
            if isinstance(value, int | float | str | bool) or value is None:
                self._wandb.summary[key] = value
        shown = {image.stem: wandb.Image(str(image)) for image in images if image.is_file()}
        if shown:
            self._wandb.log(shown)

    def log_model(self, folder: Path, name: str) -> None:
        """The trained policy's folder as a W&B model artifact (logging.wandb_log_model)."""
        if self._wandb is None or not self.cfg.wandb_log_model:
            return
        import wandb

        artifact = wandb.Artifact(name, type="model")
        artifact.add_dir(str(folder))
        self._wandb.log_artifact(artifact)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections of a report as KEY/SUBKEY."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
