"""The registry, the shipped data with its classic values, and the env object's guarantees."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from synthstats.envs import Env, env_names, get_env

REPO = Path(__file__).resolve().parents[1]

ALL_ENVS = [
    "death_process",
    "dugongs",
    "eight_schools",
    "hyperbolic_temporal_discount",
    "irt",
    "location_finding",
    "lotka_volterra",
    "peregrines",
    "surgical",
    "survival_analysis",
]
SIMULATED = [
    "death_process",
    "hyperbolic_temporal_discount",
    "irt",
    "location_finding",
    "lotka_volterra",
    "survival_analysis",
]


def test_registry_lists_the_ten_envs():
    assert env_names() == ALL_ENVS


def test_unknown_env_names_every_known_env():
    with pytest.raises(ValueError) as raised:
        get_env("no_such_env")
    for name in ALL_ENVS:
        assert name in str(raised.value)


@pytest.mark.parametrize("name", ALL_ENVS)
def test_every_env_is_complete(name):
    env = get_env(name)
    assert isinstance(env, Env)
    assert env.name == name
    assert env.description
    assert set(env.variables) == set(env.data), "every array needs a plain-language meaning"
    assert len(env.observed) == 1 and env.observed[0] in env.data
    assert "model" in env.reference_program
    assert isinstance(env.reference_elpd, float)
    assert env.demonstrations_path is not None and env.demonstrations_path.exists()


@pytest.mark.parametrize("name", ALL_ENVS)
def test_data_is_read_only(name):
    env = get_env(name)
    array = env.data[env.observed[0]]
    with pytest.raises(ValueError):
        array[0] = array[0]
    with pytest.raises(TypeError):
        env.data["extra"] = array


@pytest.mark.parametrize("name", ALL_ENVS)
def test_env_survives_pickling(name):
    env = get_env(name)
    copy = pickle.loads(pickle.dumps(env))
    assert copy.data_hash() == env.data_hash()
    assert copy.render_prompt() == env.render_prompt()
    assert copy.demonstrations() == env.demonstrations()


@pytest.mark.parametrize("name", ALL_ENVS)
def test_config_group_has_a_file_per_env(name):
    config = REPO / "configs" / "env" / f"{name}.yaml"
    assert config.read_text().strip() == f"name: {name}"


def test_dugongs_classic_values():
    data = get_env("dugongs").data
    assert data["age"].tolist() == [
        1, 1.5, 1.5, 1.5, 2.5, 4, 5, 5, 7, 8, 8.5, 9, 9.5, 9.5,
        10, 12, 12, 13, 13, 14.5, 15.5, 15.5, 16.5, 17, 22.5, 29, 31.5,
    ]  # fmt: skip
    assert data["length"].tolist() == [
        1.80, 1.85, 1.87, 1.77, 2.02, 2.27, 2.15, 2.26, 2.47, 2.19, 2.26, 2.40, 2.39, 2.41,
        2.50, 2.32, 2.32, 2.43, 2.47, 2.56, 2.65, 2.47, 2.64, 2.56, 2.70, 2.72, 2.57,
    ]  # fmt: skip


def test_eight_schools_classic_values():
    data = get_env("eight_schools").data
    assert data["y"].tolist() == [28, 8, -3, 7, -1, 1, 18, 12]
    assert data["sigma"].tolist() == [15, 10, 16, 11, 9, 11, 10, 18]


def test_surgical_classic_values():
    data = get_env("surgical").data
    assert data["n"].tolist() == [47, 148, 119, 810, 211, 196, 148, 215, 207, 97, 256, 360]
    assert data["r"].tolist() == [0, 18, 8, 46, 8, 13, 9, 31, 14, 8, 29, 24]


def test_peregrines_classic_values():
    data = get_env("peregrines").data
    assert data["year"].tolist() == list(range(1964, 2004))
    assert data["pairs"].tolist() == [
        34, 45, 39, 36, 20, 18, 21, 20, 17, 20, 23, 27, 29, 39, 43, 47, 57, 56, 63, 70,
        82, 90, 95, 107, 114, 121, 132, 134, 143, 150, 154, 172, 163, 164, 161, 137, 157, 153,
        191, 193,
    ]  # fmt: skip


@pytest.mark.parametrize("name", SIMULATED)
def test_simulated_envs_have_enough_observations(name):
    env = get_env(name)
    observed = env.data[env.observed[0]]
    assert len(observed) >= 20
    assert all(len(values) == len(observed) for values in env.data.values())
    assert "seed" in env.extra and "truth" in env.extra


def test_simulated_shapes_and_ranges():
    death = get_env("death_process").data
    assert ((death["infected"] >= 0) & (death["infected"] <= death["population"])).all()
    assert ((death["time"] > 0) & (death["time"] < 2)).all()
    discount = get_env("hyperbolic_temporal_discount").data
    assert (discount["dr"] > discount["ir"]).all()
    assert set(np.unique(discount["choice"])) == {0, 1}
    irt = get_env("irt").data
    assert irt["correct"].shape == (72,)
    assert set(zip(irt["student"].tolist(), irt["question"].tolist(), strict=True)) == {
        (s, q) for s in range(12) for q in range(6)
    }
    assert get_env("location_finding").data["signal"].shape == (36,)
    survival = get_env("survival_analysis").data
    assert set(np.unique(survival["metastasized"])) == {0, 1}
    lotka = get_env("lotka_volterra").data
    assert lotka["populations"].shape == (25, 2)
    assert lotka["time"].tolist() == list(np.arange(2.0, 51.0, 2.0))


def test_data_hash_tracks_the_data():
    env = get_env("eight_schools")
    changed = Env(
        name=env.name,
        description=env.description,
        variables=env.variables,
        observed=env.observed,
        data={**env.data, "y": env.data["y"] + 1},
        reference_program=env.reference_program,
    )
    assert env.data_hash() == get_env("eight_schools").data_hash()
    assert changed.data_hash() != env.data_hash()
