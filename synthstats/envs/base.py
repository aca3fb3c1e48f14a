"""The env contract: a dataset the env owns, its prompt, and its reference program.

The generated program never supplies data. The judge injects `data` (read-only arrays) and
the program must bind `model` to a `pm.Model` whose observed variables take exactly the
arrays named in `observed`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from synthstats.envs.prompt import SYSTEM_PROMPT, render_user_prompt


def _read_only(data: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    frozen = {}
    for name, values in data.items():
        array = np.array(values, copy=True)
        array.setflags(write=False)
        frozen[name] = array
    return MappingProxyType(frozen)


@dataclass(frozen=True)
class Env:
    """One model-discovery task. Pickleable: the judge ships it to worker processes."""

    name: str
    description: str
    variables: Mapping[str, str]
    observed: tuple[str, ...]
    data: Mapping[str, np.ndarray]
    reference_program: str
    reference_elpd: float | None = None
    demonstrations_path: Path | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _read_only(self.data))
        missing = [name for name in self.observed if name not in self.data]
        if missing:
            raise ValueError(f"env {self.name!r}: observed {missing} not in data {list(self.data)}")

    def __reduce__(self):
        fields = dict(self.__dict__)
        fields["data"] = dict(fields["data"])
        return (_rebuild_env, (fields,))

    def render_prompt(self) -> list[dict[str, str]]:
        """Chat messages (system + user) that state the program contract and show the data."""
        user = render_user_prompt(
            name=self.name,
            description=self.description,
            variables=self.variables,
            observed=self.observed,
            data=self.data,
        )
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ]

    def demonstrations(self) -> list[dict]:
        """SFT records `{"prompt": chat messages, "completion": text}` from the env's JSONL."""
        if self.demonstrations_path is None:
            return []
        lines = Path(self.demonstrations_path).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def data_hash(self) -> str:
        """A stable digest of the arrays, so cached scores die with the data they scored."""
        digest = hashlib.sha256()
        for name in sorted(self.data):
            array = np.ascontiguousarray(self.data[name])
            digest.update(name.encode())
            digest.update(str(array.dtype).encode())
            digest.update(json.dumps(array.shape).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]


def _rebuild_env(fields: dict) -> Env:
    return Env(**fields)
