"""Waiting on Tinker futures as the 0.38 SDK fails them: retry, wait in the queue, or stop.

What the SDK does itself: it retries 408, 409, 429 and 5xx and polls a queued request with
no end. What reaches us, and what happens to it here:

- transient (a connection error, 408/409/429/5xx, a `RequestFailedError` of category
  server, the SDK's `RetryableException` for a 410 / expired promise): retried a bounded
  number of times, each logged, with exponential backoff and full jitter so that parallel
  runs do not retry in lockstep; when the retries run out the step fails (PolicyStepError,
  which the loop recovers from by reloading the last checkpoint).
- fatal (`AuthenticationError`, `BillingError`, any other refused status, a `ValueError`
  from a fatal status or an unreadable answer, a `RequestFailedError` of category user):
  stopped at once with a message saying what to do (TinkerFatalError).
- a poisoned training client (the SDK's `RuntimeError` after a failed custom
  forward-backward): the step failed (TinkerStepError), the client cannot go on.
- no answer: `policy.request_timeout_s` is the longest *silence* allowed. The SDK reports
  the service's queue state on every poll of a queued request; a `QueueWatch`
  (tinker_queue.py, which says how it hears them) records those reports, so a request that
  keeps being reported is
  waiting in the queue and is waited for (up to policy.queue_timeout_s), while one with
  neither an answer nor a report for request_timeout_s is dead (TinkerTimeoutError). A
  timeout is never retried: the request may still complete, and sending it again could
  apply it twice.
- the session: ServiceClient and RestClient are lazy, so the first submission opens the
  SDK's session (with its own long retries) before any future exists; submissions made
  through `request` are bounded by request_timeout_s too.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tinker
from tinker.lib.retryable_exception import RetryableException
from tinker.types import RequestErrorCategory

from synthstats.backends.tinker_queue import QueueWatch
from synthstats.errors import PolicyStepError, UserFacingError

log = logging.getLogger(__name__)

T = TypeVar("T")

# HTTP statuses the service uses for "try again": timeout, conflict, rate limit, 5xx.
_TRANSIENT_STATUS = frozenset({408, 409, 429})
MAX_BACKOFF_S = 60.0
# The SDK's own message for a training client refused after a failed forward-backward.
POISONED = "TrainingClient is poisoned"


class TinkerBackendError(UserFacingError, RuntimeError):
    """A Tinker request that could not be completed; the message says what to do."""


class TinkerFatalError(TinkerBackendError):
    """No retry or reload can fix this: the key, the account or the request must change."""


class TinkerStepError(TinkerBackendError, PolicyStepError):
    """The service clients cannot go on; reloading the last checkpoint can."""


class TinkerTimeoutError(TinkerStepError):
    """A request got no answer, and no queue report, within policy.request_timeout_s."""


@dataclass(frozen=True)
class RetryPolicy:
    # Longest silence in seconds: no answer and no queue report (policy.request_timeout_s).
    timeout_s: float
    # Retries after the first attempt (policy.max_retries).
    max_retries: int
    # First backoff in seconds, doubled per retry and capped at MAX_BACKOFF_S.
    backoff_s: float
    # Longest wait of a request the service reports as queued (policy.queue_timeout_s).
    queue_timeout_s: float = float("inf")

    def delay(self, retry: int) -> float:
        """Full jitter: uniform in [0, backoff_s * 2**retry], capped."""
        return random.uniform(0.0, min(MAX_BACKOFF_S, self.backoff_s * 2**retry))


def is_transient(error: BaseException) -> bool:
    """Rate limits, connection trouble, server-side failures, expired promises (410)."""
    if isinstance(error, (tinker.APIConnectionError, RetryableException)):
        return True  # APIConnectionError includes APITimeoutError
    if isinstance(error, tinker.APIStatusError):
        return error.status_code in _TRANSIENT_STATUS or error.status_code >= 500
    if isinstance(error, tinker.RequestFailedError):
        return error.category == RequestErrorCategory.Server
    return False


def explained(error: BaseException, what: str) -> BaseException:
    """The error a user should see for a failure no retry fixes: what happened, what to do."""
    if isinstance(error, TinkerBackendError):
        return error
    if isinstance(error, tinker.AuthenticationError):
        return TinkerFatalError(
            f"the Tinker service rejected the API key during {what} (401): set a valid "
            "TINKER_API_KEY (or run `tinker auth login`), then resume the run"
        )
    if isinstance(error, tinker.BillingError):
        return TinkerFatalError(
            f"the Tinker account has a billing problem (402, during {what}; the SDK pauses "
            "on it before giving up): fix billing in the Tinker console, then resume the run"
        )
    if isinstance(error, tinker.PermissionDeniedError):
        return TinkerFatalError(
            f"the Tinker service refused {what} (403: this key may not use this model or "
            "checkpoint): check policy.model_name and the key's project"
        )
    if isinstance(error, tinker.APIStatusError):
        return TinkerFatalError(
            f"the Tinker service refused {what} ({error.status_code}): {error.message}"
        )
    if isinstance(error, tinker.RequestFailedError):
        return TinkerFatalError(
            f"Tinker {what} failed on the service as a request error "
            f"({error.category.value}): {error.message}"
        )
    if isinstance(error, RuntimeError) and POISONED in str(error):
        return TinkerStepError(
            f"Tinker {what} was refused: an earlier forward-backward failed and the SDK "
            "refuses every later request of that training client; the run reloads its last "
            "checkpoint"
        )
    if isinstance(error, ValueError):
        return TinkerFatalError(
            f"Tinker {what} failed and the SDK does not retry it (a fatal HTTP status, or an "
            f"answer it could not read: {error}); check the service status and that tinker "
            "0.38 is installed"
        )
    return error


def submit_within(submit: Callable[[], T], what: str, timeout_s: float) -> T:
    """submit() on a helper thread, given timeout_s: the first one opens the SDK's session."""
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = submit()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error
        finally:
            finished.set()

    threading.Thread(target=run, name=f"tinker-submit-{what}", daemon=True).start()
    if not finished.wait(timeout_s):
        raise TinkerTimeoutError(
            f"Tinker {what} could not be submitted within {timeout_s:g} s "
            "(policy.request_timeout_s): the SDK opens its session on the first request, so "
            "the service may be unreachable, the key unusable or the account's billing "
            "paused (check the Tinker console); try again later"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def wait(future: Any, what: str, policy: RetryPolicy, queue: QueueWatch | None = None) -> Any:
    """future.result(), waiting through queue reports; a TinkerTimeoutError after silence."""
    started = time.monotonic()
    deadline = started + policy.timeout_s
    logged = started
    while True:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            now = time.monotonic()
            heard = None if queue is None else queue.last_report
            if heard is None or heard < started or now - heard >= policy.timeout_s:
                raise TinkerTimeoutError(
                    f"Tinker {what} got no answer and no queue report within "
                    f"{policy.timeout_s:g} s (policy.request_timeout_s): the request is lost "
                    "or the service unreachable (a billing problem also makes the SDK pause "
                    "silently, for up to an hour: check the Tinker console)"
                ) from None
            if now - started >= policy.queue_timeout_s:
                raise TinkerTimeoutError(
                    f"Tinker {what} waited {now - started:.0f} s in the service's queue "
                    f"(last state {queue.state}, {queue.reason or 'no reason given'}), more "
                    "than policy.queue_timeout_s: raise it or try again later"
                ) from None
            deadline = min(heard + policy.timeout_s, started + policy.queue_timeout_s)
            if now - logged >= policy.timeout_s:
                logged = now
                log.warning(
                    "Tinker %s has waited %.0f s in the service's queue (%s: %s); still waiting",
                    what,
                    now - started,
                    queue.state,
                    queue.reason or "no reason given",
                )


def with_retries(attempt: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """Run attempt(), which submits a request and waits on it, retrying transient errors."""
    retry = 0
    while True:
        try:
            return attempt()
        except Exception as error:
            if not is_transient(error):
                problem = explained(error, what)
                if problem is error:
                    raise
                raise problem from error
            if retry == policy.max_retries:
                raise TinkerStepError(
                    f"Tinker {what} still failing after {retry + 1} attempts "
                    f"(policy.max_retries={policy.max_retries}): {error}"
                ) from error
            pause = policy.delay(retry)
            retry += 1
            log.warning(
                "Tinker %s failed (%s: %s); retry %d of %d in %.1f s",
                what,
                type(error).__name__,
                error,
                retry,
                policy.max_retries,
                pause,
            )
            time.sleep(pause)


def wait_with_retries(
    future: Any,
    submit: Callable[[], Any],
    what: str,
    policy: RetryPolicy,
    queue: QueueWatch | None = None,
) -> Any:
    """Wait on an already submitted future; on a transient error, submit() again and wait."""
    pending = [future]

    def attempt() -> Any:
        if pending:
            return wait(pending.pop(), what, policy, queue)
        return wait(submit_within(submit, what, policy.timeout_s), what, policy, queue)

    return with_retries(attempt, what, policy)


def request(
    submit: Callable[[], Any], what: str, policy: RetryPolicy, queue: QueueWatch | None = None
) -> Any:
    """Submit (bounded, as it may open the session), wait and retry one request."""

    def attempt() -> Any:
        return wait(submit_within(submit, what, policy.timeout_s), what, policy, queue)

    return with_retries(attempt, what, policy)
