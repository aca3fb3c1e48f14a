"""The chat prompt states the program contract and shows the data, or a summary of it."""

import numpy as np
import pytest

from synthstats.envs import Env, env_names, get_env
from synthstats.envs.prompt import FULL_DISPLAY_LIMIT


@pytest.mark.parametrize("name", env_names())
def test_prompt_is_system_then_user(name):
    messages = get_env(name).render_prompt()
    assert [message["role"] for message in messages] == ["system", "user"]
    assert all(isinstance(message["content"], str) for message in messages)


def test_system_prompt_states_the_contract():
    system = get_env("dugongs").render_prompt()[0]["content"]
    for phrase in [
        "`data`",
        "read-only",
        "`model`",
        "pm.Model",
        'observed=data["name"]',
        "nowhere else",
        "pm.sample",
        "```python",
    ]:
        assert phrase in system, phrase


def test_user_prompt_shows_small_datasets_in_full():
    user = get_env("eight_schools").render_prompt()[1]["content"]
    assert "y = [28, 8, -3, 7, -1, 1, 18, 12]" in user
    assert "sigma = [15, 10, 16, 11, 9, 11, 10, 18]" in user
    assert '`data["y"]`' in user
    assert "- `y` (shape (8,), int64, observed)" in user
    assert "- `sigma` (shape (8,), float64, input)" in user


def test_user_prompt_includes_description_and_every_variable():
    env = get_env("lotka_volterra")
    user = env.render_prompt()[1]["content"]
    assert env.description in user
    for variable, meaning in env.variables.items():
        assert f"`{variable}`" in user and meaning in user
    assert "populations = [[33, 9], [27, 8]," in user


def test_large_arrays_are_summarised_not_listed():
    values = np.arange(FULL_DISPLAY_LIMIT + 400, dtype=float)
    env = Env(
        name="big",
        description="A long series.",
        variables={"x": "input", "y": "output"},
        observed=("y",),
        data={"x": values, "y": 2 * values},
        reference_program="",
    )
    user = env.render_prompt()[1]["content"]
    assert "y: min 0, max 998, mean 499" in user
    assert "first values [0, 2, 4," in user
    assert str(FULL_DISPLAY_LIMIT + 300) not in user
    assert "shape (500,)" in user


def test_env_without_demonstrations_has_none():
    env = Env(
        name="bare",
        description="",
        variables={"y": "output"},
        observed=("y",),
        data={"y": np.zeros(3)},
        reference_program="",
    )
    assert env.demonstrations() == []
