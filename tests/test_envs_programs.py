"""Reference and demonstration programs keep the program contract the prompt states.

Static checks read the source; the build check runs each program (no sampling) and confirms
that the observed variable takes exactly the env's array.
"""

import ast
import re

import numpy as np
import pytest

from synthstats.envs import env_names, get_env

ALLOWED_IMPORTS = {
    "pymc",
    "numpy",
    "pytensor",
    "pytensor.tensor",
    "math",
    "scipy.special",
    "scipy.stats",
}
FORBIDDEN_CALLS = {"open", "eval", "exec", "getattr", "setattr", "compile", "__import__", "globals"}
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def fenced_programs(completion: str) -> list[str]:
    return FENCE.findall(completion)


def all_programs() -> list[tuple[str, str, str]]:
    """(env name, label, program) for every reference and demonstration program."""
    programs = []
    for name in env_names():
        env = get_env(name)
        programs.append((name, "reference", env.reference_program))
        for index, record in enumerate(env.demonstrations()):
            (program,) = fenced_programs(record["completion"])
            programs.append((name, f"demo{index}", program))
    return programs


PROGRAMS = all_programs()
IDS = [f"{name}-{label}" for name, label, _ in PROGRAMS]


@pytest.mark.parametrize("name", env_names())
def test_each_env_has_at_least_eight_demonstrations(name):
    env = get_env(name)
    records = env.demonstrations()
    assert len(records) >= 8
    assert len({record["completion"] for record in records}) == len(records)
    for record in records:
        assert set(record) == {"prompt", "completion"}
        assert record["prompt"] == env.render_prompt(), (
            "stale prompt: run python -m synthstats.maintain refresh-prompts"
        )
        completion = record["completion"]
        assert completion.startswith("<think>") and "</think>" in completion
        assert len(fenced_programs(completion)) == 1
        assert completion.rstrip().endswith("```")


@pytest.mark.parametrize(("name", "label", "program"), PROGRAMS, ids=IDS)
def test_program_keeps_the_static_contract(name, label, program):
    env = get_env(name)
    tree = ast.parse(program)
    (observed,) = env.observed
    assert f'observed=data["{observed}"]' in program
    assert re.search(rf'pm\.\w+\(\s*"{observed}"', program), "observed RV is named after its data"
    assert "pm.sample" not in program
    assert any(
        isinstance(node, ast.withitem)
        and isinstance(node.optional_vars, ast.Name)
        and node.optional_vars.id == "model"
        for node in ast.walk(tree)
    ), "binds `model` with `with pm.Model() as model`"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {alias.name for alias in node.names} <= ALLOWED_IMPORTS
        if isinstance(node, ast.ImportFrom):
            assert node.module in ALLOWED_IMPORTS
        if isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_CALLS and not node.id.startswith("__")
        if isinstance(node, ast.Attribute):
            assert not node.attr.startswith("__")
    data_uses = [
        node for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "data"
    ]
    subscripts = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "data"
    ]
    assert len(subscripts) == len(data_uses), "data is read only as data[...]"
    for node in subscripts:
        assert isinstance(node.slice, ast.Constant) and node.slice.value in env.data
    observed_reads = [node for node in subscripts if node.slice.value == observed]
    assert len(observed_reads) == 1, "the observed array is used only in its likelihood"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "label", "program"), PROGRAMS, ids=IDS)
def test_program_builds_a_model_on_the_env_data(name, label, program):
    import pymc as pm

    env = get_env(name)
    namespace = {"data": env.data}
    exec(compile(program, f"<{name} {label}>", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, pm.Model)
    (observed,) = env.observed
    assert [variable.name for variable in model.observed_RVs] == [observed]
    observed_values = model.rvs_to_values[model[observed]].data
    np.testing.assert_array_equal(observed_values, env.data[observed])
    assert model.free_RVs, "a model has parameters to infer"
    assert not any(variable.dtype.startswith("int") for variable in model.free_RVs)
