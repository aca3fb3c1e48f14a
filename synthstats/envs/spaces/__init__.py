"""Enumerable program spaces for four envs, with their judge scores shipped as data.

`get_space(name)` returns the space. Its ELPDs, scored once with the real judge at the
default judge config, lie in `scores/ENV.json`; the judge reads them
(`synthstats.judge.space_scores.load_scores`) and re-scores a space with
`python -m synthstats.maintain score-space ENV`.
"""

from pathlib import Path

from synthstats.envs.spaces import dugongs, eight_schools, peregrines, surgical
from synthstats.envs.spaces.grammar import Choice, ProgramSpace, Slot

SCORES_DIR = Path(__file__).parent / "scores"

SPACES: dict[str, ProgramSpace] = {
    module.SPACE.env_name: module.SPACE for module in (dugongs, eight_schools, surgical, peregrines)
}


def get_space(env_name: str) -> ProgramSpace:
    """The program space of an env; ValueError naming the envs that have one."""
    if env_name not in SPACES:
        raise ValueError(
            f"env {env_name!r} has no enumerable program space; choose one of {sorted(SPACES)}"
        )
    return SPACES[env_name]


__all__ = ["SCORES_DIR", "SPACES", "Choice", "ProgramSpace", "Slot", "get_space"]
