"""Builds envs from the files shipped in this package, so adding an env needs no code.

An env named NAME is three files next to this module:

- `specs/NAME.yaml`: description, variables, observed, reference program, reference ELPD
  (and `seed` for a simulated env, whose generator is `simulate.GENERATORS[NAME]`);
- `data/NAME.json`: `{"data": {variable: values}}` (a simulated env adds `"truth"`);
- `demonstrations/NAME.jsonl`: SFT records, optional.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from synthstats.envs.base import Env

PACKAGE_DIR = Path(__file__).parent
SPEC_DIR = PACKAGE_DIR / "specs"
DATA_DIR = PACKAGE_DIR / "data"
DEMONSTRATION_DIR = PACKAGE_DIR / "demonstrations"

REQUIRED_KEYS = ("name", "description", "variables", "observed", "reference_program")


def spec_path(name: str) -> Path:
    return SPEC_DIR / f"{name}.yaml"


def data_path(name: str) -> Path:
    return DATA_DIR / f"{name}.json"


def demonstration_path(name: str) -> Path:
    return DEMONSTRATION_DIR / f"{name}.jsonl"


def env_names() -> list[str]:
    """Every shipped env, sorted."""
    return sorted(path.stem for path in SPEC_DIR.glob("*.yaml"))


def load_spec(name: str) -> dict:
    """The YAML spec of one env, checked for the keys every env needs."""
    spec = yaml.safe_load(spec_path(name).read_text())
    missing = [key for key in REQUIRED_KEYS if key not in spec]
    if missing or spec["name"] != name:
        raise ValueError(f"{spec_path(name)}: missing keys {missing} or name != {name!r}")
    return spec


def load_data_file(name: str) -> dict:
    """The data file as written: `data` (name -> nested lists) and, if simulated, `truth`."""
    return json.loads(data_path(name).read_text())


def arrays_from_json(data: dict[str, list]) -> dict[str, np.ndarray]:
    """JSON integers become int64 arrays and JSON floats float64 arrays."""
    return {name: np.asarray(values) for name, values in data.items()}


@cache
def get_env(name: str) -> Env:
    """The env called `name`; an unknown name raises ValueError listing the known ones."""
    if name not in env_names():
        raise ValueError(f"unknown env {name!r}; known envs: {', '.join(env_names())}")
    spec = load_spec(name)
    stored = load_data_file(name)
    extra = {key: spec[key] for key in ("source", "seed") if key in spec}
    if "truth" in stored:
        extra["truth"] = stored["truth"]
    demonstrations = demonstration_path(name)
    return Env(
        name=name,
        description=spec["description"].strip(),
        variables=dict(spec["variables"]),
        observed=tuple(spec["observed"]),
        data=arrays_from_json(stored["data"]),
        reference_program=spec["reference_program"],
        reference_elpd=spec.get("reference_elpd"),
        demonstrations_path=demonstrations if demonstrations.exists() else None,
        extra=extra,
    )
