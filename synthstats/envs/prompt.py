"""The chat prompt an env shows the policy: the program contract, then the dataset.

Small datasets are shown in full so the policy can look at them; for a variable with more than
`FULL_DISPLAY_LIMIT` values only a summary is shown (the program reads `data[...]` anyway).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

FULL_DISPLAY_LIMIT = 100

SYSTEM_PROMPT = """\
You are a Bayesian statistician. You write one PyMC program that models a dataset.

The contract your program must keep:
- The dataset is already loaded as `data`, a read-only mapping from variable name to numpy \
array. Read values only as `data["name"]`; never type in, copy, simulate or load data yourself.
- Build a `pm.Model` and bind it to the name `model` (for example `with pm.Model() as model:`).
- Each observed variable must appear in exactly one likelihood as \
`observed=data["name"]`, taking the whole array unchanged, in a random variable of the same \
name. Use the observed arrays nowhere else in the model: not in priors, means or transforms.
- Do not call `pm.sample` or any other inference routine. The judge samples your model with \
NUTS and scores it by its expected log predictive density (ELPD-LOO): a better predictive \
model scores higher.
- Import only pymc, numpy, pytensor (pytensor.tensor), math, scipy.special and scipy.stats. \
No files, network, eval/exec or attribute tricks.
- Keep the model small and well-posed; use continuous parameters (NUTS cannot sample \
discrete latent variables).

You may think first. Then answer with exactly one ```python fenced block holding the whole \
program, and nothing else: no text before or after the block, no blank lines at its start \
or end. Only an answer in exactly this form is scored.\
"""


def _format_number(value: object) -> str:
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)


def _format_values(array: np.ndarray) -> str:
    if array.ndim == 0:
        return _format_number(array.item())
    return "[" + ", ".join(_format_values(row) for row in array) + "]"


def _describe_array(array: np.ndarray) -> str:
    shape = "scalar" if array.ndim == 0 else f"shape {tuple(array.shape)}"
    return f"{shape}, {array.dtype}"


def _summarise(array: np.ndarray) -> str:
    flat = array.ravel()
    head = ", ".join(_format_number(value) for value in flat[:10].tolist())
    return (
        f"min {_format_number(flat.min().item())}, max {_format_number(flat.max().item())}, "
        f"mean {flat.mean():.4g}; first values [{head}, ...]"
    )


def render_data(data: Mapping[str, np.ndarray]) -> str:
    """Each array in full, or a summary when it is too long to read."""
    lines = []
    for name, array in data.items():
        if array.size <= FULL_DISPLAY_LIMIT:
            lines.append(f"{name} = {_format_values(array)}")
        else:
            lines.append(f"{name}: {_summarise(array)}")
    return "\n".join(lines)


def render_user_prompt(
    *,
    name: str,
    description: str,
    variables: Mapping[str, str],
    observed: tuple[str, ...],
    data: Mapping[str, np.ndarray],
) -> str:
    """The dataset half of the prompt: what the data are and what must be explained."""
    variable_lines = []
    for variable, meaning in variables.items():
        role = "observed" if variable in observed else "input"
        variable_lines.append(
            f"- `{variable}` ({_describe_array(data[variable])}, {role}): {meaning}"
        )
    targets = ", ".join(f'`data["{variable}"]`' for variable in observed)
    return (
        f"Dataset: {name}\n\n{description.strip()}\n\n"
        "Variables:\n" + "\n".join(variable_lines) + "\n\n"
        "Data (float values shown to 6 significant digits; `data` holds the exact arrays):\n"
        f"{render_data(data)}\n\n"
        f"Write a PyMC model, bound to `model`, whose likelihood explains {targets}."
    )
