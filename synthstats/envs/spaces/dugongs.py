"""Dugongs: length against age. 4 growth curves x 3 likelihoods x 3 noise models = 36."""

from synthstats.envs.spaces.grammar import Choice, ProgramSpace, Slot

TEMPLATE = """
import numpy as np
import pymc as pm

age = data["age"]
age_z = (age - np.mean(age)) / np.std(age)

with pm.Model() as model:
    <<growth>>
    <<noise>>
    <<likelihood>>
"""

GROWTH = Slot(
    "growth",
    (
        Choice(
            "linear",
            """
intercept = pm.Normal("intercept", mu=0.0, sigma=5.0)
slope = pm.Normal("slope", mu=0.0, sigma=1.0)
mu = intercept + slope * age_z
""",
        ),
        Choice(
            "quadratic",
            """
intercept = pm.Normal("intercept", mu=0.0, sigma=5.0)
slope = pm.Normal("slope", mu=0.0, sigma=1.0)
curvature = pm.Normal("curvature", mu=0.0, sigma=1.0)
mu = intercept + slope * age_z + curvature * age_z**2
""",
        ),
        Choice(
            "log_linear",
            """
intercept = pm.Normal("intercept", mu=0.0, sigma=5.0)
slope = pm.Normal("slope", mu=0.0, sigma=1.0)
mu = intercept + slope * np.log(age)
""",
        ),
        Choice(
            "asymptotic",
            """
asymptote = pm.Normal("asymptote", mu=2.5, sigma=1.0)
gap = pm.HalfNormal("gap", sigma=1.0)
rate = pm.Uniform("rate", lower=0.5, upper=1.0)
mu = asymptote - gap * rate**age
""",
        ),
    ),
)

NOISE = Slot(
    "noise",
    (
        Choice("half_normal", 'sigma = pm.HalfNormal("sigma", sigma=1.0)'),
        Choice("exponential", 'sigma = pm.Exponential("sigma", lam=1.0)'),
        Choice(
            "grows_with_age",
            """
log_sigma_base = pm.Normal("log_sigma_base", mu=-2.0, sigma=1.0)
log_sigma_slope = pm.Normal("log_sigma_slope", mu=0.0, sigma=0.5)
sigma = pm.math.exp(log_sigma_base + log_sigma_slope * age_z)
""",
        ),
    ),
)

LIKELIHOOD = Slot(
    "likelihood",
    (
        Choice("normal", 'pm.Normal("length", mu=mu, sigma=sigma, observed=data["length"])'),
        Choice(
            "student_t",
            'pm.StudentT("length", nu=4.0, mu=mu, sigma=sigma, observed=data["length"])',
        ),
        Choice("laplace", 'pm.Laplace("length", mu=mu, b=sigma, observed=data["length"])'),
    ),
)

SPACE = ProgramSpace(
    env_name="dugongs",
    observed="length",
    template=TEMPLATE,
    slots=(GROWTH, NOISE, LIKELIHOOD),
    reward_temperature=1.0,
)
