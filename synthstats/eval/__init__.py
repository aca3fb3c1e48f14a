"""Does the policy sample in proportion to reward? Distribution metrics (metrics.py),
enumerable program spaces with their shipped judge scores (spaces/), and exact metrics of
an enumerable policy against its space's target (exact.py)."""
