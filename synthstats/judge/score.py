"""The judge's verdict on one program: ELPD-LOO and diagnostics, or why it failed.

A Score never holds a tempered reward: the reward transform belongs to the objective, so
annealing the temperature leaves nothing stale in the score cache or the replay buffer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

ErrorKind = Literal[
    "no_program",  # no closed ```python block in the completion
    "syntax",  # the program does not parse
    "forbidden",  # the static gate or the import guard refused it
    "runtime",  # it raised while building the model (or flooded its output)
    "no_model",  # it did not bind `model` to a pm.Model
    "data_mismatch",  # its observed variables do not hold exactly the env's observed arrays
    "data_leak",  # the observed arrays feed another part of the model
    "forbidden_model",  # the model uses a construct the judge does not rebuild (describe.py)
    "sampling",  # NUTS or LOO failed, or the ELPD is not finite
    "timeout",  # wall-clock or CPU time limit
    "memory",  # address-space limit or killed for memory
    "crashed",  # the process died without a verdict (segfault, abort, dead worker)
    "noncanonical",  # not its program's canonical completion (set by the loop, not the judge)
]
ERROR_KINDS: tuple[str, ...] = ErrorKind.__args__


class Failure(Exception):
    """Raised inside the judge to end scoring with an error kind and a short message."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Score:
    """One program's score. Diagnostics are None when the program failed before LOO."""

    ok: bool
    error_kind: ErrorKind | None = None
    message: str = ""
    elpd_loo: float | None = None
    se: float | None = None
    p_loo: float | None = None
    # Largest Pareto k, and how many observations exceed arviz's good-k threshold.
    pareto_k_max: float | None = None
    pareto_k_bad: int | None = None
    divergences: int | None = None
    rhat_max: float | None = None
    # Rough Monte Carlo standard error of elpd_loo, from split-chain batches.
    mcse_elpd: float | None = None
    # Wall-clock seconds the judge spent scoring (not the cache lookup, for cached scores),
    # and of them: compiling the model's functions, sampling (LOO refits included), LOO.
    seconds: float = 0.0
    compile_seconds: float | None = None
    sampling_seconds: float | None = None
    loo_seconds: float | None = None
    cached: bool = False

    def __post_init__(self) -> None:
        if self.ok == (self.error_kind is not None):
            raise ValueError(f"ok={self.ok} contradicts error_kind={self.error_kind!r}")
        if self.error_kind is not None and self.error_kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error_kind!r}")

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, seconds: float = 0.0) -> Score:
        return cls(ok=False, error_kind=kind, message=message, seconds=seconds)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Score:
        """Rebuilds a Score from untrusted JSON (a worker reply or a cache row), strictly."""
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = set(fields) - set(known)
        if unknown:
            raise ValueError(f"unknown score fields {sorted(unknown)}")
        clean: dict[str, Any] = {}
        for name, value in fields.items():
            if value is None or name in ("error_kind", "message"):
                clean[name] = value if name != "message" else str(value or "")
            elif name in ("ok", "cached"):
                clean[name] = bool(value)
            elif name in ("pareto_k_bad", "divergences"):
                clean[name] = int(value)
            else:
                number = float(value)
                clean[name] = number if math.isfinite(number) else None
        return cls(**clean)
