"""Opening the Tinker service: credentials first, then the model check, before any work.

The API key is only ever looked up, never read into our own variables, logged or stored:
the SDK reads it from the environment (or from `tinker auth login`'s stored key) itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tinker.lib.credentials import JsonCredentialStore, default_credentials_path

from synthstats.backends.tinker_retry import RetryPolicy, request
from synthstats.errors import UserFacingError

API_KEY_VARIABLE = "TINKER_API_KEY"


class TinkerSetupError(UserFacingError, RuntimeError):
    """The Tinker backend cannot start; the message says what to change."""


@dataclass(frozen=True)
class TinkerConnection:
    """The two SDK entry points the backend uses (tests pass fakes of both)."""

    # tinker.ServiceClient: training and sampling clients.
    service: Any
    # tinker.RestClient: server capabilities (needs no session).
    rest: Any


def require_credentials() -> None:
    """Fail before any work unless the SDK will find a key (env, credential cmd, or login)."""
    if os.environ.get(API_KEY_VARIABLE) or os.environ.get("TINKER_CREDENTIAL_CMD"):
        return
    if JsonCredentialStore(default_credentials_path()).get_default_key() is not None:
        return
    raise TinkerSetupError(
        f"the Tinker backend needs an API key: set {API_KEY_VARIABLE} (or run "
        "`tinker auth login`); create a key in the Tinker console"
    )


def connect() -> TinkerConnection:
    """The real service clients; neither makes a network call when built."""
    import tinker

    return TinkerConnection(service=tinker.ServiceClient(), rest=tinker.RestClient())


def check_model_supported(rest: Any, model_name: str, retry: RetryPolicy) -> None:
    """Stop with the list of trainable models when model_name is not one of them."""
    capabilities = request(rest.get_server_capabilities, "server capabilities", retry)
    trainable = sorted(
        model.model_name
        for model in capabilities.supported_models
        if model.model_name and model.trainable is not False
    )
    if model_name not in trainable:
        raise TinkerSetupError(
            f"policy.model_name={model_name!r} is not a model the Tinker service trains; "
            f"supported: {', '.join(trainable) or '(none reported)'}"
        )
