"""The objective every backend calls: objective(log_pf, mask, log_flow, *, log_reward, log_z).

One small class per loss (no string dispatch inside a loss). The flow-based losses add
`tb_anchor_weight` times the TB loss: at LM lengths the (0, L) pair's SubTB weight lamda^L is
~0 (0.9^500 = 1e-23), so without the anchor log Z and log R meet only through a chain of
learned flows. The default weight 1.0 gives the whole-trajectory residual equal footing with
the local ones; 0 recovers plain SubTB / DB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from torch import Tensor

from synthstats.objectives.balance import db_loss, subtb_loss, tb_loss

if TYPE_CHECKING:
    from synthstats.config import ObjectiveConfig


class Objective(Protocol):
    """A scalar loss over a batch of trajectories; `needs_flow` says whether log_flow is read."""

    needs_flow: ClassVar[bool]

    def __call__(
        self,
        log_pf: Tensor,
        mask: Tensor,
        log_flow: Tensor | None,
        *,
        log_reward: Tensor,
        log_z: Tensor,
    ) -> Tensor: ...


@dataclass(frozen=True, kw_only=True)
class TrajectoryBalance:
    huber_delta: float | None = None
    needs_flow: ClassVar[bool] = False

    def __call__(
        self,
        log_pf: Tensor,
        mask: Tensor,
        log_flow: Tensor | None = None,
        *,
        log_reward: Tensor,
        log_z: Tensor,
    ) -> Tensor:
        return tb_loss(
            log_pf, mask, log_reward=log_reward, log_z=log_z, huber_delta=self.huber_delta
        )


@dataclass(frozen=True, kw_only=True)
class _AnchoredFlowLoss:
    """A flow-based loss plus tb_anchor_weight * TB."""

    tb_anchor_weight: float = 1.0
    huber_delta: float | None = None
    needs_flow: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.tb_anchor_weight < 0:
            raise ValueError(f"tb_anchor_weight must be >= 0, got {self.tb_anchor_weight}")

    def __call__(
        self,
        log_pf: Tensor,
        mask: Tensor,
        log_flow: Tensor,
        *,
        log_reward: Tensor,
        log_z: Tensor,
    ) -> Tensor:
        loss = self._flow_loss(log_pf, mask, log_flow, log_reward=log_reward, log_z=log_z)
        if self.tb_anchor_weight == 0:
            return loss
        anchor = tb_loss(
            log_pf, mask, log_reward=log_reward, log_z=log_z, huber_delta=self.huber_delta
        )
        return loss + self.tb_anchor_weight * anchor

    def _flow_loss(
        self, log_pf: Tensor, mask: Tensor, log_flow: Tensor, *, log_reward: Tensor, log_z: Tensor
    ) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class SubTrajectoryBalance(_AnchoredFlowLoss):
    lamda: float = 0.9

    def _flow_loss(
        self, log_pf: Tensor, mask: Tensor, log_flow: Tensor, *, log_reward: Tensor, log_z: Tensor
    ) -> Tensor:
        return subtb_loss(
            log_pf,
            mask,
            log_flow,
            log_reward=log_reward,
            log_z=log_z,
            lamda=self.lamda,
            huber_delta=self.huber_delta,
        )


@dataclass(frozen=True, kw_only=True)
class DetailedBalance(_AnchoredFlowLoss):
    def _flow_loss(
        self, log_pf: Tensor, mask: Tensor, log_flow: Tensor, *, log_reward: Tensor, log_z: Tensor
    ) -> Tensor:
        return db_loss(
            log_pf, mask, log_flow, log_reward=log_reward, log_z=log_z, huber_delta=self.huber_delta
        )


_BUILDERS = {
    "tb": lambda cfg: TrajectoryBalance(huber_delta=cfg.huber_delta),
    "subtb": lambda cfg: SubTrajectoryBalance(
        lamda=cfg.lamda, tb_anchor_weight=cfg.tb_anchor_weight, huber_delta=cfg.huber_delta
    ),
    "db": lambda cfg: DetailedBalance(
        tb_anchor_weight=cfg.tb_anchor_weight, huber_delta=cfg.huber_delta
    ),
}

LOSS_NAMES = tuple(_BUILDERS)


def build_objective(cfg: ObjectiveConfig) -> Objective:
    """The objective named by cfg.loss (tb | subtb | db), with cfg's lamda, anchor and Huber."""
    if cfg.loss not in _BUILDERS:
        raise ValueError(f"unknown loss {cfg.loss!r}; choose one of {LOSS_NAMES}")
    return _BUILDERS[cfg.loss](cfg)
