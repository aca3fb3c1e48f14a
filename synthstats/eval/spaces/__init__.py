"""Enumerable program spaces for four envs, with their judge scores shipped as data.

`get_space(name)` returns the space; `load_scores(space)` its shipped ELPDs (scored once
with the real judge at the default judge config; re-score with
`python -m synthstats.eval.spaces.scores ENV`).
"""

from synthstats.eval.spaces import dugongs, eight_schools, peregrines, surgical
from synthstats.eval.spaces.grammar import Choice, ProgramSpace, Slot

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


__all__ = ["SPACES", "Choice", "ProgramSpace", "Slot", "get_space"]
