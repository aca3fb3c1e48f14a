"""Seeded generators for the simulated envs, after the BoxingGym environments of the same names.

Each generator draws the hidden parameters from the BoxingGym prior, runs the BoxingGym
generative process over a fixed design and returns the arrays an env ships. They use
`numpy.random.RandomState`, whose stream numpy keeps frozen, so a generator re-run with
its seed reproduces the shipped data file bit for bit (tests/test_envs_data.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.special import expit, ndtr

Arrays = dict[str, np.ndarray]


class Simulation(NamedTuple):
    """What a generator returns: the shipped arrays and the hidden truth that made them."""

    data: Arrays
    truth: dict[str, float | list]


def _truncated_normal(rng: np.random.RandomState, mu: float, sigma: float, lo: float, hi: float):
    while True:
        draw = rng.normal(mu, sigma)
        if lo <= draw <= hi:
            return draw


def death_process(seed: int) -> Simulation:
    """Infections in a population of 50 counted once at each of 24 times in (0, 2)."""
    rng = np.random.RandomState(seed)
    population = 50
    theta = _truncated_normal(rng, mu=1.0, sigma=1.0, lo=0.0, hi=2.0)
    time = np.round(np.arange(1, 25) * 0.08, 2)
    infected = rng.binomial(population, 1.0 - np.exp(-theta * time))
    data = {"time": time, "population": np.full(time.shape, population), "infected": infected}
    return Simulation(data, {"theta": theta})


def hyperbolic_temporal_discount(seed: int) -> Simulation:
    """50 choices between iR dollars now and dR dollars after `days` days (1 = delayed)."""
    rng = np.random.RandomState(seed)
    epsilon = 0.01
    k = np.exp(rng.normal(-4.25, 0.5))
    alpha = abs(rng.normal(0.0, 2.0))
    trials = 50
    immediate = rng.randint(1, 200, size=trials)
    delayed = np.array([rng.randint(low + 1, 300) for low in immediate])
    days = rng.randint(1, 365, size=trials)
    value_gap = delayed / (1.0 + k * days) - immediate
    p_delayed = epsilon + (1.0 - 2.0 * epsilon) * ndtr(value_gap / alpha)
    choice = rng.binomial(1, p_delayed)
    data = {"ir": immediate, "dr": delayed, "days": days, "choice": choice}
    return Simulation(data, {"k": k, "alpha": alpha, "epsilon": epsilon})


def irt(seed: int) -> Simulation:
    """A 2PL item-response model: 12 students answer all of 6 questions (long format)."""
    rng = np.random.RandomState(seed)
    n_students, n_questions = 12, 6
    ability = rng.normal(0.0, 1.0, n_students)
    difficulty = rng.normal(0.0, 1.0, n_questions)
    discrimination = rng.normal(0.0, 1.0, n_questions)
    student, question = (grid.ravel() for grid in np.indices((n_students, n_questions)))
    logit = discrimination[question] * (ability[student] - difficulty[question])
    correct = rng.binomial(1, expit(logit))
    data = {"student": student, "question": question, "correct": correct}
    truth = {
        "ability": ability.tolist(),
        "difficulty": difficulty.tolist(),
        "discrimination": discrimination.tolist(),
    }
    return Simulation(data, truth)


def location_finding(seed: int) -> Simulation:
    """Signal from 3 hidden sources in the plane, measured on a 6 x 6 grid over [-2, 2]^2."""
    rng = np.random.RandomState(seed)
    background, peak, softening, noise = 0.1, 1.0, 1e-4, 0.5
    sources = rng.normal(0.0, 1.0, (3, 2))
    axis = np.linspace(-2.0, 2.0, 6)
    x1, x2 = (grid.ravel() for grid in np.meshgrid(axis, axis, indexing="ij"))
    points = np.stack([x1, x2], axis=1)
    squared_distance = ((points[:, None, :] - sources[None, :, :]) ** 2).sum(axis=2)
    intensity = background + (peak / (softening + squared_distance)).sum(axis=1)
    signal = np.round(rng.normal(intensity, noise), 2)
    data = {"x1": x1, "x2": x2, "signal": signal}
    return Simulation(data, {"sources": sources.tolist()})


def survival_analysis(seed: int) -> Simulation:
    """Whether each of 60 breast-cancer patients has died, given time since surgery."""
    rng = np.random.RandomState(seed)
    lambda0 = rng.gamma(shape=0.1, scale=1.0 / 0.1)
    beta = abs(rng.normal(0.0, 10.0))
    patients = 60
    time = rng.uniform(0.0, 10.0, patients)
    metastasized = rng.randint(0, 2, patients)
    p_death = expit(time * np.exp(beta * metastasized) * lambda0)
    died = rng.binomial(1, p_death)
    data = {"time": time, "metastasized": metastasized, "died": died}
    return Simulation(data, {"lambda0": lambda0, "beta": beta})


def _lotka_volterra_rk4(rates: np.ndarray, start: np.ndarray, times: np.ndarray) -> np.ndarray:
    alpha, beta, gamma, delta = rates

    def slope(state: np.ndarray) -> np.ndarray:
        prey, predator = state
        return np.array(
            [alpha * prey - beta * prey * predator, delta * prey * predator - gamma * predator]
        )

    step = 0.01
    state, clock, path = start.astype(float), 0.0, []
    for target in times:
        for _ in range(round((target - clock) / step)):
            k1 = slope(state)
            k2 = slope(state + 0.5 * step * k1)
            k3 = slope(state + 0.5 * step * k2)
            k4 = slope(state + step * k3)
            state = state + step / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        clock = target
        path.append(state)
    return np.array(path)


def lotka_volterra(seed: int) -> Simulation:
    """Prey and predator counts at t = 2, 4, ..., 50 from the Lotka-Volterra ODE (rounded)."""
    rng = np.random.RandomState(seed)
    rates = np.array(
        [
            rng.normal(0.1, 0.01),
            rng.normal(0.02, 0.01),
            rng.normal(0.4, 0.04),
            rng.normal(0.01, 0.001),
        ]
    )
    time = np.arange(2.0, 51.0, 2.0)
    path = _lotka_volterra_rk4(rates, np.array([40.0, 9.0]), time)
    counts = np.clip(np.round(path), 0, None).astype(np.int64)
    truth = dict(zip(["alpha", "beta", "gamma", "delta"], rates.tolist(), strict=True))
    return Simulation({"time": time, "populations": counts}, truth)


GENERATORS: dict[str, Callable[[int], Simulation]] = {
    "death_process": death_process,
    "hyperbolic_temporal_discount": hyperbolic_temporal_discount,
    "irt": irt,
    "location_finding": location_finding,
    "survival_analysis": survival_analysis,
    "lotka_volterra": lotka_volterra,
}
