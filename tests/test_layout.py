"""The package's folders follow the data flow: every import, lazy ones included, runs downward.

A newcomer reads the layers bottom-up (settings, then the env, judge and objective rooms,
then the policy backends, then the training loop and the jobs, then the commands); an
import that runs the other way would make a folder depend on a room above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import synthstats

PACKAGE = Path(synthstats.__file__).parent
# Higher imports lower, never the reverse; equal layers do not import each other.
LAYERS = {
    "errors": 0,
    "progress": 0,  # progress bars for terminals and notebooks
    "config": 1,
    "envs": 2,
    "objectives": 2,
    "replay": 2,
    "judge": 3,  # scores an env's programs
    "backends": 4,
    "train": 5,
    "eval": 6,  # the jobs: evaluation and the validation job, which runs the trainer
    "cli": 7,
    "launch": 7,  # `synthstats launch`: accelerate launch with a shipped config
    "api": 7,  # the Python API: config resolution, training, scoring, evaluation
    "maintain": 7,
}


def room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "synthstats" or len(parts) < 2:
        return None
    return parts[1]


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_every_room_has_a_layer():
    rooms = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert rooms == set(LAYERS)


def test_imports_run_down_the_data_flow():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.name == "__init__.py" and len(relative.parts) == 1:
            continue
        own = relative.parts[0].removesuffix(".py")
        for module in imported_modules(path):
            target = room(module)
            if target is None or target == own:
                continue
            if LAYERS[target] >= LAYERS[own]:
                upward.append(f"{relative} imports {module}")
    assert upward == []
