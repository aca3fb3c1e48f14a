"""What an installed wheel needs: every imported package declared, types marked, configs shipped."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import synthstats

PACKAGE = Path(synthstats.__file__).parent
ROOT = PACKAGE.parent
# Import name -> distribution name, where the two differ.
DISTRIBUTIONS = {"yaml": "pyyaml", "sklearn": "scikit-learn"}
# Imported only where their extra is installed (deepspeed), guarded at the import.
OPTIONAL = {"deepspeed"}


def third_party_imports() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found.update(name.split(".")[0] for name in names)
    return {
        name
        for name in found
        if name not in sys.stdlib_module_names and name != "synthstats" and name not in OPTIONAL
    }


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~\[ ]", item)[0].lower() for item in project["dependencies"]}


def test_every_imported_package_is_declared():
    missing = {
        name for name in third_party_imports() if DISTRIBUTIONS.get(name, name) not in declared()
    }
    assert missing == set()


def test_the_package_ships_type_information():
    assert (PACKAGE / "py.typed").is_file()


def test_importing_synthstats_stays_light():
    """Judge children run under an address-space limit that torch alone nearly fills."""
    code = (
        "import sys, synthstats\n"
        "assert synthstats.resolve_config('policy=mock').policy.kind == 'mock'\n"
        "heavy = {'torch', 'transformers', 'peft', 'pymc', 'tinker', 'wandb'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_api_names_resolve_lazily():
    from synthstats import ConfigError, evaluate, resolve_config, run_training, score_program

    assert all(callable(item) for item in (evaluate, resolve_config, run_training, score_program))
    assert issubclass(ConfigError, ValueError)
    assert "run_training" in dir(synthstats)
