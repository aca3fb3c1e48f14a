"""Waiting on Tinker futures: a hard per-request timeout, and bounded retries with jitter.

The SDK retries some failures itself, silently and for a very long time, so every wait
here has a timeout that ends in a clear error instead of a hung run. A timeout is not
retried: the request may still complete on the server, and sending it again could apply
it twice. Rate limits and transient server or connection errors are retried a bounded
number of times, each logged, with exponential backoff and full jitter so that parallel
runs do not retry in lockstep. When the retries run out the error is raised: a request
is never silently dropped.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tinker
from tinker.types import RequestErrorCategory

from synthstats.errors import UserFacingError

log = logging.getLogger(__name__)

T = TypeVar("T")

# HTTP statuses the service uses for "try again": timeout, conflict, rate limit, 5xx.
_TRANSIENT_STATUS = frozenset({408, 409, 429})
MAX_BACKOFF_S = 60.0


class TinkerBackendError(UserFacingError, RuntimeError):
    """A Tinker request that could not be completed; the message says what to do."""


class TinkerTimeoutError(TinkerBackendError):
    """A request got no answer within policy.request_timeout_s."""


@dataclass(frozen=True)
class RetryPolicy:
    # Seconds to wait for one answer (policy.request_timeout_s).
    timeout_s: float
    # Retries after the first attempt (policy.max_retries).
    max_retries: int
    # First backoff in seconds, doubled per retry and capped at MAX_BACKOFF_S.
    backoff_s: float

    def delay(self, retry: int) -> float:
        """Full jitter: uniform in [0, backoff_s * 2**retry], capped."""
        return random.uniform(0.0, min(MAX_BACKOFF_S, self.backoff_s * 2**retry))


def is_transient(error: BaseException) -> bool:
    """Rate limits, connection trouble and server-side failures; not our own mistakes."""
    if isinstance(error, tinker.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, tinker.APIStatusError):
        return error.status_code in _TRANSIENT_STATUS or error.status_code >= 500
    if isinstance(error, tinker.RequestFailedError):
        return error.category == RequestErrorCategory.Server
    return False


def wait(future: Any, what: str, timeout_s: float) -> Any:
    """future.result() within timeout_s, else a TinkerTimeoutError naming the request."""
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        raise TinkerTimeoutError(
            f"Tinker {what} got no answer within {timeout_s:g} s "
            "(policy.request_timeout_s): the service may be overloaded or unreachable; "
            "raise the timeout or try again later"
        ) from None


def with_retries(attempt: Callable[[], T], what: str, policy: RetryPolicy) -> T:
    """Run attempt(), which submits a request and waits on it, retrying transient errors."""
    retry = 0
    while True:
        try:
            return attempt()
        except Exception as error:
            if not is_transient(error):
                raise
            if retry == policy.max_retries:
                raise TinkerBackendError(
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
    future: Any, submit: Callable[[], Any], what: str, policy: RetryPolicy
) -> Any:
    """Wait on an already submitted future; on a transient error, submit() again and wait."""
    pending = [future]

    def attempt() -> Any:
        return wait(pending.pop() if pending else submit(), what, policy.timeout_s)

    return with_retries(attempt, what, policy)


def request(submit: Callable[[], Any], what: str, policy: RetryPolicy) -> Any:
    """Submit, wait and retry one request."""
    return wait_with_retries(submit(), submit, what, policy)
