"""The two pictures of a validation run (slot or language-model path): every program's
learned against target probability, and TV and log Z over the steps. Written with
matplotlib's file-only backend (no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def plot_programs(
    path: Path,
    labels: Sequence[str],
    target: np.ndarray,
    learned: Mapping[str, np.ndarray],
    title: str,
) -> None:
    """One row per program, most probable under p* on top: p* as bars, each policy's
    p_theta as markers."""
    order = np.argsort(-np.asarray(target), kind="stable")
    rows = np.arange(len(order))
    figure, axes = plt.subplots(figsize=(9, 1.5 + 0.22 * len(order)))
    axes.barh(rows, np.asarray(target)[order], color="0.8", label="target p*")
    for (name, probabilities), marker in zip(learned.items(), "o^sD", strict=False):
        axes.plot(np.asarray(probabilities)[order], rows, marker, ms=4, ls="", label=name)
    axes.set_yticks(rows, [labels[index] for index in order], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("probability")
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(
    path: Path,
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    log_partition: float,
    tv_goal: float,
    title: str,
    log_z_label: str = "log Z",
) -> None:
    """TV to p* over the steps for every policy (log scale), and each learned log Z (or
    what `log_z_label` names) against log sum R."""
    figure, (tv_axes, log_z_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in histories.items():
        steps = [row["step"] for row in history]
        tv_axes.plot(steps, [row["tv"] for row in history], label=name)
        log_z = [row["log_z"] for row in history]
        if all(np.isfinite(log_z)):
            log_z_axes.plot(steps, log_z, label=f"{name} {log_z_label}")
    tv_axes.axhline(tv_goal, color="0.5", ls="--", lw=1, label=f"goal {tv_goal}")
    tv_axes.set_yscale("log")
    tv_axes.set_xlabel("step")
    tv_axes.set_ylabel("TV(p*, p_theta)")
    tv_axes.legend()
    log_z_axes.axhline(log_partition, color="0.5", ls="--", lw=1, label="log sum R")
    log_z_axes.set_xlabel("step")
    log_z_axes.set_ylabel(log_z_label)
    log_z_axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
