"""Surgical: deaths out of operations in 12 hospitals.

3 hospital-effect structures x 3 links x 2 intercept priors x 2 likelihoods = 36.
"""

from synthstats.envs.spaces.grammar import Choice, ProgramSpace, Slot

TEMPLATE = """
import pymc as pm

n = data["n"]

with pm.Model() as model:
    intercept = pm.Normal("intercept", <<intercept_prior>>)
    <<effects>>
    p = <<link>>
    <<likelihood>>
"""

EFFECTS = Slot(
    "effects",
    (
        Choice("pooled", "eta = intercept"),
        Choice(
            "hierarchical",
            """
spread = pm.HalfNormal("spread", sigma=1.0)
z = pm.Normal("z", mu=0.0, sigma=1.0, shape=len(n))
eta = intercept + spread * z
""",
        ),
        Choice(
            "independent",
            """
z = pm.Normal("z", mu=0.0, sigma=1.0, shape=len(n))
eta = intercept + 2.0 * z
""",
        ),
    ),
)

LINK = Slot(
    "link",
    (
        Choice("logit", "pm.math.invlogit(eta)"),
        Choice("probit", "pm.math.invprobit(eta)"),
        Choice("cloglog", "1.0 - pm.math.exp(-pm.math.exp(eta))"),
    ),
)

INTERCEPT_PRIOR = Slot(
    "intercept_prior",
    (Choice("wide", "mu=0.0, sigma=2.5"), Choice("low_rate", "mu=-2.0, sigma=1.0")),
)

LIKELIHOOD = Slot(
    "likelihood",
    (
        Choice("binomial", 'pm.Binomial("r", n=n, p=p, observed=data["r"])'),
        Choice(
            "beta_binomial",
            """
concentration = pm.Exponential("concentration", lam=0.01)
pm.BetaBinomial(
    "r", alpha=p * concentration, beta=(1.0 - p) * concentration, n=n, observed=data["r"]
)
""",
        ),
    ),
)

SPACE = ProgramSpace(
    env_name="surgical",
    observed="r",
    template=TEMPLATE,
    slots=(EFFECTS, LINK, INTERCEPT_PRIOR, LIKELIHOOD),
    reward_temperature=1.5,
)
