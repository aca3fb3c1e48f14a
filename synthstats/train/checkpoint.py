"""Atomic checkpoints: written to a temporary folder and renamed into place.

A kill at any moment leaves the previous checkpoint whole. Layout of a run directory:

    RUN_DIR/config.yaml              the resolved config
    RUN_DIR/metrics.jsonl            one line per step
    RUN_DIR/checkpoints/step-000010/ policy/ (backend.save) + loop_state.pt + config.yaml
    RUN_DIR/checkpoints/latest       name of the newest complete checkpoint
    RUN_DIR/final/                   the trained policy a user keeps, never pruned

torch is imported where a checkpoint is read or written, so that checking a run directory
(the command line's checks before a run starts) stays light.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEEP_CHECKPOINTS = 2
FINAL_DIR = "final"
# Sharded optimizer state (DeepSpeed): needed to resume, not to use the policy.
_NOT_FINAL = ("deepspeed",)


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    save_policy: Callable[[Path], None],
    loop_state: dict[str, Any] | None,
    config_yaml: str,
    is_main: bool = True,
    keep: int = KEEP_CHECKPOINTS,
    release_policy: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` and point `latest` at it, never leaving a half-written one.

    With several processes every rank calls this, since saving the policy may be collective
    (a ZeRO-3 gather, DeepSpeed's optimizer shards); only the main rank writes the rest.
    """
    import torch

    root = checkpoints_dir(run_dir)
    name = f"step-{step:06d}"
    staging = root / f".tmp-{name}"
    if not is_main:
        save_policy(staging / "policy")
        return root / name
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_policy(staging / "policy")
    torch.save(loop_state, staging / "loop_state.pt")
    (staging / "config.yaml").write_text(config_yaml)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _write_atomically(root / "latest", name)
    _prune(root, keep=keep, release=release_policy)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = checkpoints_dir(run_dir) / "latest"
    if not pointer.exists():
        return None
    path = checkpoints_dir(run_dir) / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_loop_state(checkpoint: Path) -> dict[str, Any]:
    import torch

    # The state holds numpy RNG state and plain containers written by this program.
    return torch.load(checkpoint / "loop_state.pt", weights_only=False)


def export_final(run_dir: Path, checkpoint: Path, tokenizer: Any = None) -> Path:
    """Copy the trained policy of `checkpoint` into RUN_DIR/final, outside the pruned
    checkpoints: the LoRA adapter (with the tokenizer beside it, when given), the slot
    policy's state file, or Tinker's sampler and state paths. Replaced whole, atomically."""
    final = run_dir / FINAL_DIR
    staging = run_dir / f".tmp-{FINAL_DIR}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint / "policy", staging, ignore=shutil.ignore_patterns(*_NOT_FINAL))
    shutil.copy2(checkpoint / "config.yaml", staging / "config.yaml")
    adapter = staging / "adapter"
    if tokenizer is not None and adapter.is_dir():
        tokenizer.save_pretrained(str(adapter))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text)
    os.replace(staging, path)


def _prune(root: Path, keep: int, release: Callable[[Path], None] | None = None) -> None:
    """Keep the newest `keep` checkpoints; release(policy folder) drops what one holds elsewhere."""
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in complete[:-keep]:
        if release is not None:
            release(old / "policy")
        shutil.rmtree(old, ignore_errors=True)
