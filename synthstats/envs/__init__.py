"""Envs: datasets the env owns, their prompts, reference programs and demonstrations.

`get_env(name)` returns a frozen, pickleable `Env`; `env_names()` lists what ships.
"""

from synthstats.envs.base import Env
from synthstats.envs.catalog import env_names, get_env

__all__ = ["Env", "env_names", "get_env"]
