"""A run's directory and its one logging path, shared by training and the validation job."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from synthstats.config import Config
from synthstats.errors import UserFacingError
from synthstats.train.checkpoint import latest_checkpoint


class RunError(UserFacingError, RuntimeError):
    """A run that cannot start; the message says what to change."""


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    step: int
    steps: int
    # The signal that stopped the run early, if one did (SIGTERM or Ctrl-C's SIGINT).
    stopped_by: int | None = None

    @property
    def finished(self) -> bool:
        return self.step >= self.steps

    @property
    def exit_code(self) -> int:
        """0 when finished; else the shell's 128 + signal (143 SIGTERM, 130 Ctrl-C)."""
        if self.finished:
            return 0
        return 128 + (self.stopped_by or signal.SIGTERM)


def open_run_dir(config: Config) -> tuple[Path, Path | None]:
    """The run directory, and the checkpoint to resume from (None for a new run)."""
    if config.resume:
        run_dir = Path(config.resume)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise RunError(f"resume={run_dir}: no checkpoint found under {run_dir}/checkpoints")
        return run_dir, checkpoint
    run_dir = Path(config.output_dir)
    if latest_checkpoint(run_dir) is not None:
        raise RunError(
            f"output_dir={run_dir} already holds a run; continue it with resume={run_dir}, "
            "or choose another output_dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"output_dir={run_dir}: cannot create it ({error.strerror})") from None
    return run_dir, None


def setup_logging(run_dir: Path, *, rank: int = 0) -> None:
    """Messages to stderr and to RUN_DIR/train.log: the one logging path of a run. Ranks
    other than the main one only print their warnings, marked with their rank. When the
    root logger already prints to the console (a notebook's basicConfig), messages reach
    the console through it alone, never twice."""
    main = rank == 0
    root = logging.getLogger("synthstats")
    root.setLevel(logging.INFO if main else logging.WARNING)
    marker = "" if main else f"[rank {rank}] "
    formatter = logging.Formatter(f"%(asctime)s {marker}%(levelname)s %(name)s: %(message)s")
    for previous in list(root.handlers):
        root.removeHandler(previous)
        previous.close()
    handlers: list[logging.Handler] = []
    if not _root_prints_to_console():
        handlers.append(logging.StreamHandler(sys.stderr))
    if main:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


def _root_prints_to_console() -> bool:
    consoles = {id(stream) for stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)}
    return any(
        isinstance(handler, logging.StreamHandler) and id(handler.stream) in consoles
        for handler in logging.getLogger().handlers
    )


def remove_unstarted(run_dir: Path) -> None:
    """Remove a run directory this start created when no step was recorded in it, so a
    failed start leaves nothing behind."""
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir() or latest_checkpoint(run_dir) is not None:
        return
    if metrics.exists() and metrics.stat().st_size > 0:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
