"""The policy layer: one protocol (base.py), a local implementation, and a factory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from synthstats.backends.base import PolicyBackend, Rollout, TrainBatch
from synthstats.config import Config, ConfigError

if TYPE_CHECKING:
    from synthstats.backends.distributed import Distributed

__all__ = ["PolicyBackend", "Rollout", "TrainBatch", "build_backend"]


def build_backend(
    config: Config,
    prompt_keys: Sequence[str] | None = None,
    *,
    distributed: Distributed | None = None,
) -> PolicyBackend:
    """The backend that config.policy names; the log Z table gets one row per prompt key.

    prompt_keys defaults to the env name (one prompt per env). `distributed` is the process
    setup the local backend trains under (default: the one `accelerate launch` describes).
    """
    keys = list(prompt_keys) if prompt_keys is not None else [config.env.name]
    kind = config.policy.kind
    if kind == "tinker" or config.runner.name == "tinker":
        if kind != "tinker" or config.runner.name != "tinker":
            raise ConfigError(
                f"runner=tinker and policy=tinker go together; got runner={config.runner.name} "
                f"with policy.kind={kind}"
            )
        from synthstats.backends.tinker import TinkerBackend

        return TinkerBackend(
            policy=config.policy,
            train=config.runner.train,
            objective=config.objective,
            prompt_keys=keys,
            seed=config.seed,
        )
    if kind == "slot":
        from synthstats.backends.slot import SlotBackend
        from synthstats.envs.spaces import get_space

        return SlotBackend(
            get_space(config.env.name),
            policy=config.policy,
            train=config.runner.train,
            objective=config.objective,
            prompt_keys=keys,
            seed=config.seed,
        )
    if kind not in ("hf", "mock"):
        raise NotImplementedError(f"policy.kind={kind!r} has no backend; use hf, mock or slot")
    if kind == "hf" and not config.policy.model_name:
        raise ValueError("policy.kind=hf needs policy.model_name (a hub id or a local folder)")

    from synthstats.backends.local import LocalBackend
    from synthstats.backends.mock_model import mock_model_folder

    model_path = mock_model_folder() if kind == "mock" else config.policy.model_name
    return LocalBackend(
        model_path,
        policy=config.policy,
        train=config.runner.train,
        objective=config.objective,
        prompt_keys=keys,
        seed=config.seed,
        distributed=distributed,
    )
