"""Eight schools: treatment effects with known standard errors.

4 pooling strengths (prior on tau) x 3 prior scales of the mean x 2 effect shapes
x 2 likelihoods = 48. Effects are non-centred, so NUTS needs no reparametrising luck.
"""

from synthstats.envs.spaces.grammar import Choice, ProgramSpace, Slot

TEMPLATE = """
import pymc as pm

sigma = data["sigma"]

with pm.Model() as model:
    mu = pm.Normal("mu", mu=0.0, sigma=<<mean_prior>>)
    <<pooling>>
    <<effects>>
    theta = pm.Deterministic("theta", mu + tau * z)
    <<likelihood>>
"""

POOLING = Slot(
    "pooling",
    (
        Choice("strong", 'tau = pm.HalfNormal("tau", sigma=1.0)'),
        Choice("moderate", 'tau = pm.HalfNormal("tau", sigma=5.0)'),
        Choice("half_cauchy", 'tau = pm.HalfCauchy("tau", beta=5.0)'),
        Choice("weak", 'tau = pm.HalfNormal("tau", sigma=25.0)'),
    ),
)

MEAN_PRIOR = Slot(
    "mean_prior",
    (Choice("sd_1", "1.0"), Choice("sd_5", "5.0"), Choice("sd_20", "20.0")),
)

EFFECTS = Slot(
    "effects",
    (
        Choice("normal", 'z = pm.Normal("z", mu=0.0, sigma=1.0, shape=len(sigma))'),
        Choice("student_t", 'z = pm.StudentT("z", nu=3.0, mu=0.0, sigma=1.0, shape=len(sigma))'),
    ),
)

LIKELIHOOD = Slot(
    "likelihood",
    (
        Choice("normal", 'pm.Normal("y", mu=theta, sigma=sigma, observed=data["y"])'),
        Choice("student_t", 'pm.StudentT("y", nu=4.0, mu=theta, sigma=sigma, observed=data["y"])'),
    ),
)

SPACE = ProgramSpace(
    env_name="eight_schools",
    observed="y",
    template=TEMPLATE,
    slots=(POOLING, MEAN_PRIOR, EFFECTS, LIKELIHOOD),
    reward_temperature=0.15,
)
