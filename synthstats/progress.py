"""Progress bars for terminals and notebooks, with log lines routed around them.

tqdm's own rule (disable=None) hides a bar whenever stderr is not a terminal, which is
always the case in Jupyter; there `tqdm.auto` draws a widget, so a notebook kernel counts
as interactive too. Piped output and CI logs get no bar, only the log lines.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, as_completed
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

T = TypeVar("T")


def interactive() -> bool:
    """A terminal on stderr, or a Jupyter/IPython kernel."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


@contextmanager
def progress_bar(
    total: int, desc: str, *, show: bool = True, unit: str = "it", initial: int = 0
) -> Iterator[Any]:
    """A bar (or a disabled one) while the block runs; the package's log lines go above it
    instead of through it."""
    enabled = show and interactive()
    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled)
    loggers = [logging.getLogger(), logging.getLogger("synthstats")]
    redirect = logging_redirect_tqdm(loggers=loggers) if enabled else nullcontext()
    with bar, redirect:
        yield bar


def gather(
    futures: Sequence[Future[T]], desc: str, *, show: bool = True, unit: str = "it"
) -> list[T]:
    """The futures' results in input order, with a bar that advances as each completes."""
    with progress_bar(len(futures), desc, show=show, unit=unit) as bar:
        for _ in as_completed(futures):
            bar.update(1)
    return [future.result() for future in futures]
