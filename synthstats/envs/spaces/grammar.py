"""A program space: a PyMC template with slots, each filled by one of a few choices.

Every combination of choices renders one program, so the space is the Cartesian product of
the slots and can be enumerated; a program is identified by its path (one choice index per
slot, in slot order). Placeholders are written `<<slot>>`: alone on a line, a choice's
code may span several lines and is indented like the placeholder (empty code drops the
line); inside a line it must be one line. A choice's code may itself hold placeholders of
other slots, so a prior scale chosen once can appear in several coefficient priors.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import cached_property

PLACEHOLDER = re.compile(r"<<(\w+)>>")
_WHOLE_LINE = re.compile(r"^(\s*)<<(\w+)>>\s*$")
# Nesting deeper than this is a cycle between choices.
_MAX_DEPTH = 8

Path = tuple[int, ...]


@dataclass(frozen=True)
class Choice:
    """One way to fill a slot; the label names its token in the slot policy."""

    label: str
    code: str


@dataclass(frozen=True)
class Slot:
    name: str
    choices: tuple[Choice, ...]

    def __post_init__(self) -> None:
        labels = [choice.label for choice in self.choices]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"slot {self.name!r} needs >= 2 choices with distinct labels")


@dataclass(frozen=True)
class ProgramSpace:
    """The programs of one env; `reward_temperature` is the T that makes p* a hard target
    (largest p* < 0.5, TV(uniform, p*) >= 0.3; tests/test_spaces.py checks both)."""

    env_name: str
    observed: str
    template: str
    slots: tuple[Slot, ...]
    reward_temperature: float

    def __post_init__(self) -> None:
        names = [slot.name for slot in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.env_name}: slot names repeat: {names}")
        used = set(PLACEHOLDER.findall(self.template))
        for slot in self.slots:
            for choice in slot.choices:
                used |= set(PLACEHOLDER.findall(choice.code))
        if used != set(names):
            raise ValueError(
                f"{self.env_name}: placeholders {sorted(used)} do not match slots {sorted(names)}"
            )

    def __len__(self) -> int:
        return math.prod(len(slot.choices) for slot in self.slots)

    def paths(self) -> list[Path]:
        """Every program's path, in lexicographic order."""
        return list(itertools.product(*(range(len(slot.choices)) for slot in self.slots)))

    def render(self, path: Path) -> str:
        """The program source (no fence) of one path."""
        if len(path) != len(self.slots):
            raise ValueError(f"a path of {self.env_name} has {len(self.slots)} entries: {path}")
        code = {
            slot.name: slot.choices[index].code
            for slot, index in zip(self.slots, path, strict=True)
        }
        return _fill(self.template, code, depth=0).strip() + "\n"

    def completion(self, path: Path) -> str:
        """The program as a policy's completion: one ```python fenced block."""
        return f"```python\n{self.render(path)}```"

    def labels(self, path: Path) -> dict[str, str]:
        """Slot name -> chosen label: a readable name of the program."""
        return {
            slot.name: slot.choices[index].label
            for slot, index in zip(self.slots, path, strict=True)
        }

    @cached_property
    def completions(self) -> tuple[str, ...]:
        """Every program's completion, in `paths()` order."""
        return tuple(self.completion(path) for path in self.paths())

    def path_of(self, completion: str) -> Path:
        """The path whose completion is exactly this text; KeyError outside the space."""
        try:
            return self._path_by_completion[completion]
        except KeyError:
            raise KeyError(f"text is not a program of the {self.env_name} space") from None

    @cached_property
    def _path_by_completion(self) -> dict[str, Path]:
        table = dict(zip(self.completions, self.paths(), strict=True))
        if len(table) != len(self):
            raise ValueError(f"{self.env_name}: two paths render the same program")
        return table


def _fill(text: str, code: dict[str, str], depth: int) -> str:
    if depth > _MAX_DEPTH:
        raise ValueError("placeholders nest too deeply (a cycle between choices?)")
    lines = []
    for line in text.splitlines():
        whole = _WHOLE_LINE.match(line)
        if whole:
            indent, name = whole.groups()
            block = _fill(code[name].strip("\n"), code, depth + 1)
            lines += [indent + row if row.strip() else "" for row in block.splitlines()]
        else:
            lines.append(PLACEHOLDER.sub(lambda m: _inline(code, m.group(1), depth), line))
    return "\n".join(lines)


def _inline(code: dict[str, str], name: str, depth: int) -> str:
    filled = _fill(code[name], code, depth + 1)
    if "\n" in filled:
        raise ValueError(f"slot {name!r} is used inside a line but its code spans lines")
    return filled
