"""The GFlowNet objective shared by every backend: losses, log Z, flows, reward, thinking.

A pure function of tensors: no I/O, no optimizer, no knowledge of PyMC or of the backend.
"""

from synthstats.objectives.balance import db_loss, subtb_loss, tb_loss
from synthstats.objectives.failures import failure_loss
from synthstats.objectives.flows import FlowInputs, HiddenStateFlowHead, PrefixFlowNet
from synthstats.objectives.log_z import LogZTable, PromptIndex, vargrad_log_z
from synthstats.objectives.objective import (
    LOSS_NAMES,
    DetailedBalance,
    Objective,
    SubTrajectoryBalance,
    TrajectoryBalance,
    build_objective,
)
from synthstats.objectives.reward import (
    anneal_temperature,
    log_reward_from_elpd,
    temperature_at,
    tempered_log_reward,
)
from synthstats.objectives.thinking import (
    THINKING_MODES,
    ThinkingMode,
    ThinkReference,
    latent_think_log_reward,
    objective_log_reward,
    think_log_prob,
    think_span_mask,
)

__all__ = [
    "LOSS_NAMES",
    "THINKING_MODES",
    "DetailedBalance",
    "FlowInputs",
    "HiddenStateFlowHead",
    "LogZTable",
    "Objective",
    "PrefixFlowNet",
    "PromptIndex",
    "SubTrajectoryBalance",
    "ThinkReference",
    "ThinkingMode",
    "TrajectoryBalance",
    "anneal_temperature",
    "build_objective",
    "db_loss",
    "failure_loss",
    "latent_think_log_reward",
    "log_reward_from_elpd",
    "objective_log_reward",
    "subtb_loss",
    "tb_loss",
    "temperature_at",
    "tempered_log_reward",
    "think_log_prob",
    "think_span_mask",
    "vargrad_log_z",
]
