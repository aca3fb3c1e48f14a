"""Failure programs of a space: edits of its programs that the judge's static gate refuses.

Both exact checks add them to a space so that the failure treatment (failures out of the
balance, the on-policy term that lowers their mass; see synthstats.objectives.failures) is
measured exactly too: the slot policy can write every program with any of these edits
(synthstats.backends.slot), the language-model job declares four (synthstats.eval.lm_exact).
Each edit fails before any program runs (a forbidden import or call, a syntax error), so
the refusal is deterministic and needs no shipped score.
"""

from __future__ import annotations

from collections.abc import Callable

from synthstats.envs.spaces.grammar import Path, ProgramSpace

# Label -> edit of a rendered program. The gate refuses each (tests/test_spaces.py).
FAILURE_EDITS: dict[str, Callable[[str], str]] = {
    "import os": lambda program: "import os\n" + program,
    "open()": lambda program: program + '\nopen("data.csv")',
    "eval()": lambda program: program + '\neval("1")',
    "syntax error": lambda program: program + "\ndef broken(:",
}


def failure_completion(space: ProgramSpace, path: Path, edit: str) -> str:
    """The program at `path` with one edit, as a completion in canonical form (one fenced
    block, no surrounding whitespace), like `space.completion`."""
    body = FAILURE_EDITS[edit](space.render(path)).strip()
    return f"```python\n{body}\n```"


def failure_programs(space: ProgramSpace) -> list[str]:
    """One failure completion per edit, of the space's first program (the LM job's four)."""
    first = space.paths()[0]
    return [failure_completion(space, first, edit) for edit in FAILURE_EDITS]


def every_failure_program(space: ProgramSpace) -> list[str]:
    """Every program of the space with every edit, in `paths()` order then edit order."""
    return [
        failure_completion(space, path, edit) for path in space.paths() for edit in FAILURE_EDITS
    ]
