"""SynthStats: a GFlowNet sampler over PyMC programs, rewarded by ELPD-LOO."""

__version__ = "0.1.0"
