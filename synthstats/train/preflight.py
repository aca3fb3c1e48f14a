"""Inputs checked before a run creates anything: the env, the output directory, the model,
the SFT file, and for Tinker the model family and the API key. Each costs milliseconds (a hub
lookup at most; the Tinker checks make no request), against the half minute a model load and
a judge pool take before a late failure would surface.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from synthstats.config import Config, ConfigError
from synthstats.envs import env_names, get_env
from synthstats.train.checkpoint import latest_checkpoint


def check_settings(config: Config) -> None:
    """Raise one ConfigError for settings wrong on any machine: the env, its program space."""
    found = [*_env_problems(config), *_slot_problems(config), *_tinker_model_problems(config)]
    if found:
        raise ConfigError(*found)


def check_inputs(config: Config) -> None:
    """Raise one ConfigError listing every setting and input (on this machine: the output
    directory, the model, the SFT file) that would stop the run later."""
    found = [
        *_env_problems(config),
        *_slot_problems(config),
        *_output_dir_problems(config),
        *_model_problems(config),
        *_tinker_model_problems(config),
        *_tinker_key_problems(config),
        *_sft_problems(config),
    ]
    if found:
        raise ConfigError(*found)


def _env_problems(config: Config) -> list[str]:
    if config.env.name in env_names():
        return []
    return [f"env.name={config.env.name!r} is not an env; available: {', '.join(env_names())}"]


def _slot_problems(config: Config) -> list[str]:
    from synthstats.envs.spaces import SPACES

    if (
        config.policy.kind != "slot"
        or config.env.name in SPACES
        or config.env.name not in (env_names())
    ):
        return []
    return [
        f"env {config.env.name!r} has no enumerable program space, which policy=slot (the "
        f"default) needs ({', '.join(sorted(SPACES))} have one); for other envs choose a "
        "language model, e.g. policy=hf_qwen3_0_6b"
    ]


def _tinker_model_problems(config: Config) -> list[str]:
    """A hosted model outside the family table, without tokenizer, format and head size."""
    if config.policy.kind != "tinker":
        return []
    from synthstats.backends.tinker_chat import model_family

    try:
        model_family(config.policy)
    except ConfigError as error:
        return error.problems
    return []


def _tinker_key_problems(config: Config) -> list[str]:
    """No key where the SDK looks (environment, credential command, `tinker auth login`)."""
    if config.policy.kind != "tinker":
        return []
    from synthstats.backends.tinker_connection import TinkerSetupError, require_credentials

    try:
        require_credentials()
    except TinkerSetupError as error:
        return [str(error)]
    return []


def _output_dir_problems(config: Config) -> list[str]:
    if config.resume:
        run_dir = Path(config.resume)
        if latest_checkpoint(run_dir) is None:
            return [f"resume={run_dir}: no checkpoint found under {run_dir}/checkpoints"]
        return []
    run_dir = Path(config.output_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        return [f"output_dir={run_dir} is a file; choose a directory"]
    if latest_checkpoint(run_dir) is not None:
        return [
            f"output_dir={run_dir} already holds a run; continue it with resume={run_dir}, "
            "or choose another output_dir"
        ]
    existing = next(parent for parent in (run_dir, *run_dir.parents) if parent.exists())
    if not existing.is_dir():
        return [f"output_dir={run_dir}: {existing} is a file, not a directory"]
    try:
        # A real write, since permission bits lie (root, read-only or virtual filesystems).
        Path(tempfile.mkdtemp(prefix=".synthstats-probe-", dir=existing)).rmdir()
    except OSError as error:
        return [f"output_dir={run_dir}: cannot create folders in {existing} ({error.strerror})"]
    return []


def _model_problems(config: Config) -> list[str]:
    policy = config.policy
    if policy.kind != "hf" or not policy.model_name.strip():
        return []  # mock and slot build their model; Tinker checks its own list at start
    name = policy.model_name
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not (path / "config.json").is_file():
            return [
                f"policy.model_name={name}: no model folder there (a local model needs a "
                "config.json); give an existing folder or a hub id such as Qwen/Qwen3-0.6B"
            ]
        return []
    return _hub_problems(name)


def _hub_problems(repo_id: str) -> list[str]:
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    where = f"policy.model_name={repo_id}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return [f"{where}: neither a local folder nor a hub id (NAMESPACE/NAME)"]
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return []
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return [f"{where}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"]
    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return [f"{where}: a gated model; accept its terms on the hub and run `hf auth login`"]
    except RepositoryNotFoundError:
        return [f"{where}: no such model on the Hugging Face hub (or it is private)"]
    except Exception as error:  # the hub raises many transport errors when unreachable
        return [
            f"{where}: not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(error).__name__}); connect, or give a local model folder"
        ]
    return []


def _sft_problems(config: Config) -> list[str]:
    sft = config.sft_warmstart
    if not sft.enabled or not sft.data_path:
        return []
    from synthstats.train.sft import BUILTIN_PREFIX, DemonstrationError, read_demonstrations

    data_path = sft.data_path
    if data_path.startswith(BUILTIN_PREFIX):
        name = data_path[len(BUILTIN_PREFIX) :]
        if name not in env_names():
            return [f"sft_warmstart.data_path={data_path}: no env {name!r}"]
        if get_env(name).demonstrations_path is None:
            return [f"sft_warmstart.data_path={data_path}: env {name!r} ships no demonstrations"]
        return []
    path = Path(data_path).expanduser()
    if not path.is_file():
        return [f"sft_warmstart.data_path={data_path}: no such file"]
    try:
        read_demonstrations(path, strip_thinking=sft.strip_thinking, skip_invalid=sft.skip_invalid)
    except DemonstrationError as error:
        return [str(error)]
    except (OSError, UnicodeDecodeError) as error:
        return [f"sft_warmstart.data_path={data_path}: cannot read it ({error})"]
    return []
