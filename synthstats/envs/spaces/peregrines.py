"""Peregrines: breeding pairs per year, 1964-2003 (a count time series).

4 polynomial degrees in standardised year x 3 count likelihoods x 3 coefficient priors = 36.
"""

from synthstats.envs.spaces.grammar import Choice, ProgramSpace, Slot

TEMPLATE = """
import numpy as np
import pymc as pm

year = data["year"]
year_z = (year - np.mean(year)) / np.std(year)
degree = <<degree>>
powers = np.column_stack([year_z**k for k in range(1, degree + 1)])

with pm.Model() as model:
    intercept = pm.Normal("intercept", mu=0.0, sigma=10.0)
    coefficients = pm.Normal("coefficients", mu=0.0, sigma=<<coefficient_prior>>, shape=degree)
    log_rate = intercept + pm.math.dot(powers, coefficients)
    <<likelihood>>
"""

DEGREE = Slot(
    "degree",
    tuple(
        Choice(name, str(value))
        for value, name in enumerate(("linear", "quadratic", "cubic", "quartic"), start=1)
    ),
)

COEFFICIENT_PRIOR = Slot(
    "coefficient_prior",
    (Choice("sd_0.25", "0.25"), Choice("sd_1", "1.0"), Choice("sd_10", "10.0")),
)

LIKELIHOOD = Slot(
    "likelihood",
    (
        Choice("poisson", 'pm.Poisson("pairs", mu=pm.math.exp(log_rate), observed=data["pairs"])'),
        Choice(
            "negative_binomial",
            """
dispersion = pm.Exponential("dispersion", lam=0.1)
pm.NegativeBinomial(
    "pairs", mu=pm.math.exp(log_rate), alpha=dispersion, observed=data["pairs"]
)
""",
        ),
        Choice(
            "poisson_lognormal",
            """
noise_scale = pm.HalfNormal("noise_scale", sigma=0.5)
noise = pm.Normal("noise", mu=0.0, sigma=1.0, shape=len(year))
pm.Poisson(
    "pairs", mu=pm.math.exp(log_rate + noise_scale * noise), observed=data["pairs"]
)
""",
        ),
    ),
)

SPACE = ProgramSpace(
    env_name="peregrines",
    observed="pairs",
    template=TEMPLATE,
    slots=(DEGREE, COEFFICIENT_PRIOR, LIKELIHOOD),
    reward_temperature=3.0,
)
