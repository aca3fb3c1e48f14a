"""The service's queue reports, heard through tinker 0.38: the only module that touches how.

A request the service has queued is not a dead one, and only the SDK hears the difference:
each poll of a queued request returns the queue state, which the request's future passes to
the `QueueStateObserver` its client handed it at submission. The 0.38 SDK offers no public way
to add an observer (read against its source): `QueueState` and `QueueStateObserver` live in
`tinker.lib.api_future_impl`, which `tinker` does not export, and no client method takes one.
So this module hooks into the observers the clients already pass, and is the one place that
depends on them (SDK_SURFACE names each part):

- TrainingClient: every request future it makes gets `self._queue_state_logger` (a
  QueueStateLogger built in `__init__`), read when the request is submitted. A private
  attribute: watch_queue puts a QueueWatch there, which passes every report on to the logger.
- SamplingClient: it is itself a QueueStateObserver and passes `queue_state_observer=self`
  for sample() and compute_logprobs(); watch_queue wraps the instance's public
  on_queue_state_change, so the SDK's own pause logging still runs.

What no hook hears: when the service sets `sample_use_retrieve_futures` in the client config,
a sampling future waits on the session's poller, which carries no queue state, so a queued
sample is silent until it runs (policy.request_timeout_s applies). tests/test_backend_tinker.py
runs sdk_surface_problems() against the installed SDK and fails naming what changed; if it
does, watch_queue returns None and queued requests count as silence (the safe side: a clear
TinkerTimeoutError, never a wrong retry).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import tinker
from tinker.lib.api_future_impl import QueueState, QueueStateObserver

# What this module relies on; the surface test quotes it when sdk_surface_problems() finds
# a part gone.
SDK_SURFACE = (
    "tinker.lib.api_future_impl.QueueState has ACTIVE, PAUSED_RATE_LIMIT, PAUSED_CAPACITY, UNKNOWN",
    "QueueStateObserver.on_queue_state_change(queue_state, queue_state_reason) is its one "
    "abstract method",
    "every request future of a TrainingClient gets queue_state_observer="
    "self._queue_state_logger, set in TrainingClient.__init__",
    "SamplingClient subclasses QueueStateObserver and every request future it makes gets "
    "queue_state_observer=self",
)
TRAINING_OBSERVER = "_queue_state_logger"

log = logging.getLogger(__name__)


class QueueWatch(QueueStateObserver):
    """The last queue report the SDK passed to one client's observer, passed on unchanged."""

    def __init__(self, forward: Callable[[QueueState, str | None], None] | None = None) -> None:
        self._forward = forward
        self.last_report: float | None = None  # time.monotonic() of the last report
        self.state: QueueState | None = None
        self.reason: str | None = None

    def on_queue_state_change(
        self, queue_state: QueueState, queue_state_reason: str | None
    ) -> None:
        self.last_report = time.monotonic()
        self.state, self.reason = queue_state, queue_state_reason
        if self._forward is not None:
            self._forward(queue_state, queue_state_reason)


def watch_queue(client: Any) -> QueueWatch | None:
    """Hook a QueueWatch into a 0.38 training or sampling client (None if it has no hook).

    Pass the client itself, not the SDK's Backcompat*ClientFuture around it: a sampling
    client's requests report to the inner client, never to the wrapper.
    """
    if _surface_changed():
        return None
    logger = getattr(client, TRAINING_OBSERVER, None)
    if isinstance(logger, QueueStateObserver):
        watch = QueueWatch(logger.on_queue_state_change)
        setattr(client, TRAINING_OBSERVER, watch)
        return watch
    if isinstance(client, QueueStateObserver):
        watch = QueueWatch(client.on_queue_state_change)
        client.on_queue_state_change = watch.on_queue_state_change  # type: ignore[method-assign]
        return watch
    return None


@functools.cache
def _surface_changed() -> bool:
    """Checked once per process; a changed SDK is logged and its queue reports go unheard."""
    try:
        problems = sdk_surface_problems()
    except (OSError, TypeError) as error:  # no source files to read (a frozen install)
        problems = [f"cannot read the SDK's source to check it ({error})"]
    if problems:
        log.warning(
            "tinker %s: queue reports cannot be heard (%s), so a request queued longer than "
            "policy.request_timeout_s times out; synthstats expects tinker 0.38",
            tinker.__version__,
            "; ".join(problems),
        )
    return bool(problems)


def sdk_surface_problems() -> list[str]:
    """What of SDK_SURFACE the installed SDK no longer has, each naming the part that moved."""
    found = []
    if {state.name for state in QueueState} != {
        "ACTIVE",
        "PAUSED_RATE_LIMIT",
        "PAUSED_CAPACITY",
        "UNKNOWN",
    }:
        found.append(f"QueueState now has {[state.name for state in QueueState]}")
    abstract = getattr(QueueStateObserver, "__abstractmethods__", frozenset())
    parameters = list(inspect.signature(QueueStateObserver.on_queue_state_change).parameters)
    if abstract != {"on_queue_state_change"} or parameters != [
        "self",
        "queue_state",
        "queue_state_reason",
    ]:
        found.append(
            f"QueueStateObserver's abstract methods are {sorted(abstract)}, "
            f"on_queue_state_change takes {parameters}"
        )
    # The SDK sets the clients' __module__ to "tinker": read the modules defining them.
    training = inspect.getsource(inspect.getmodule(tinker.TrainingClient.__init__))
    sampling = inspect.getsource(inspect.getmodule(tinker.SamplingClient.__init__))
    if f"self.{TRAINING_OBSERVER} = " not in inspect.getsource(tinker.TrainingClient.__init__):
        found.append(f"TrainingClient.__init__ no longer sets self.{TRAINING_OBSERVER}")
    observers = re.findall(r"queue_state_observer=([\w.]+)", training)
    if not observers or set(observers) != {f"self.{TRAINING_OBSERVER}"}:
        found.append(f"TrainingClient's request futures now get queue_state_observer={observers}")
    if not issubclass(tinker.SamplingClient, QueueStateObserver):
        found.append("SamplingClient is no longer a QueueStateObserver")
    observers = re.findall(r"queue_state_observer=([\w.]+)", sampling)
    if not observers or set(observers) != {"self"}:
        found.append(f"SamplingClient's request futures now get queue_state_observer={observers}")
    return found
