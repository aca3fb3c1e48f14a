"""Does the policy sample in proportion to reward? Distribution metrics (metrics.py),
enumerable program spaces with their shipped judge scores (spaces/), exact metrics of an
enumerable policy against its space's target (exact.py), and the validation job that
`synthstats-train` runs by default (validation.py: policy=slot against a reward maximiser,
with report.json, plots and a printed summary)."""
