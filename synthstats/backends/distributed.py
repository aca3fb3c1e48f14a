"""Everything distributed behind one small surface, after Lightning Fabric.

The local backend and the training loop ask this object to prepare the module, run the
backward pass, clip, gather, reduce and save; whether that means one process, DDP or
DeepSpeed ZeRO-2/3 is decided here, from the environment `accelerate launch` sets. Bare,
it is one process and every collective returns its input, so `synthstats-train` runs the
same with or without a launcher.

Methods marked *collective* must be called on every rank, in the same order: a rank that
skips one stalls the others forever.

CPU-only launches (tests, laptops) need a gloo process group and, outside DeepSpeed,
Accelerate's `cpu=True`; without them every process believes it is rank 0 of 1. Both are
set here when no GPU is visible, so no environment variable is needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from torch import Tensor, nn

from synthstats.config import ConfigError

T = TypeVar("T")

# Tag of the one DeepSpeed checkpoint kept inside each of our checkpoint folders.
DEEPSPEED_TAG = "state"

# How reduce_metrics combines one metric over the ranks (anything else is averaged).
_SUMMED = frozenset({"tokens", "tokens_per_second", "replayed", "unique_programs"})


class Distributed:
    """One process, DDP or DeepSpeed, behind prepare / backward / clip / gather / reduce."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator

    @classmethod
    def from_environment(cls) -> Distributed:
        """The setup `accelerate launch` (or torchrun) describes, or one process when bare."""
        launched = "LOCAL_RANK" in os.environ
        cpu_only = launched and not torch.cuda.is_available()
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        handlers = [InitProcessGroupKwargs(backend="gloo")] if cpu_only else []
        return cls(Accelerator(cpu=cpu_only and not deepspeed, kwargs_handlers=handlers))

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        device = self.accelerator.device
        # Accelerate names the CPU of a multi-CPU launch "cpu:0", which torch.load rejects.
        return torch.device("cpu") if device.type == "cpu" else device

    @property
    def zero_stage(self) -> int | None:
        """DeepSpeed's ZeRO stage, None without DeepSpeed."""
        if self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            return None
        return int(self.accelerator.state.deepspeed_plugin.zero_stage)

    def share(self, total: int) -> int:
        """This rank's part of `total` trajectories (the batch is split evenly over ranks)."""
        if total % self.world_size:
            raise ConfigError(
                f"runner.train.batch_size={total} does not split evenly over "
                f"{self.world_size} processes: use a multiple of {self.world_size}"
            )
        return total // self.world_size

    def setup(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        micro_batch_size: int,
        max_grad_norm: float,
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module and optimizer wrapped for training (DDP, a DeepSpeed engine, or as is).

        Everything trainable must be inside `module`: only its parameters are synchronised.
        """
        if self.zero_stage is not None:
            ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            # No DataLoader is prepared, so DeepSpeed learns the micro-batch from here.
            ds_config["train_micro_batch_size_per_gpu"] = micro_batch_size
            # DeepSpeed clips inside its own step; runner.train.max_grad_norm stays the knob.
            ds_config["gradient_clipping"] = max_grad_norm
        return self.accelerator.prepare(module, optimizer)

    def backward(self, loss: Tensor) -> None:
        """Replaces loss.backward(); gradients are averaged over ranks. Under DeepSpeed this
        also clips (globally) and steps the optimizer."""
        self.accelerator.backward(loss)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, max_norm: float) -> dict[str, float]:
        """Clip each parameter group on its own, so log Z's large early gradient cannot shrink
        the policy's step; returns each group's norm before clipping. DeepSpeed has already
        clipped all groups together inside `backward`: its global norm is returned instead."""
        if self.zero_stage is not None:
            norm = self.accelerator.deepspeed_engine_wrapped.get_global_grad_norm()
            return {"grad_norm": math.nan if norm is None else float(norm)}
        self.accelerator.unscale_gradients(optimizer)
        return {
            f"grad_norm_{group['name']}": float(
                torch.nn.utils.clip_grad_norm_(group["params"], max_norm)
            )
            for group in optimizer.param_groups
        }

    def gathered(self, parameters: Iterable[nn.Parameter]) -> AbstractContextManager:
        """Inside the block the parameters hold their full values: under ZeRO-3 they are
        gathered from every rank (collective); otherwise they already do."""
        if self.zero_stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(parameters), modifier_rank=None)

    def full_state(self, named: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
        """CPU copies of these named parameters or buffers at full size (collective under
        ZeRO-3, where each rank holds a slice)."""
        named = list(named)
        parameters = [tensor for _, tensor in named if isinstance(tensor, nn.Parameter)]
        with self.gathered(parameters):
            return {name: tensor.detach().cpu().clone() for name, tensor in named}

    def generation_weights(self, wrapped: nn.Module) -> AbstractContextManager:
        """Inside the block the unwrapped module generates at full speed. Under ZeRO-3 its
        parameters are gathered once and DeepSpeed's per-layer fetch hooks are lifted
        (collective); otherwise this does nothing."""
        if self.zero_stage != 3:
            return nullcontext()
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        return unwrap_model_for_generation(wrapped)

    def save_sharded(self, wrapped: nn.Module, directory: Path) -> None:
        """DeepSpeed: every rank writes its shard of the optimizer state and trainable weights
        (collective; all ranks must reach `directory`, a shared filesystem across nodes)."""
        wrapped.save_checkpoint(
            str(directory), tag=DEEPSPEED_TAG, save_latest=False, exclude_frozen_parameters=True
        )

    def load_sharded(self, wrapped: nn.Module, directory: Path) -> None:
        """Restore what save_sharded wrote, with the same number of processes (collective)."""
        if not (directory / DEEPSPEED_TAG).is_dir():
            raise ConfigError(
                f"{directory.parent} holds no DeepSpeed optimizer shards: it was written without "
                "DeepSpeed; resume it under the accelerate config that wrote it"
            )
        loaded, _ = wrapped.load_checkpoint(
            str(directory),
            tag=DEEPSPEED_TAG,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if loaded is None:
            raise ValueError(f"DeepSpeed could not load its checkpoint from {directory}")

    def all_gather(self, value: T) -> list[T]:
        """Every rank's `value` (picklable), in rank order (collective)."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def gather_to_main(self, value: T) -> list[T] | None:
        """Every rank's `value` on the main rank, in rank order; None elsewhere (collective)."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast(self, value: T) -> T:
        """The main rank's `value` on every rank (collective)."""
        if self.world_size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is true on any (collective)."""
        return any(self.all_gather(bool(flag)))

    def barrier(self) -> None:
        """Wait until every rank gets here (collective)."""
        self.accelerator.wait_for_everyone()

    def reduce_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """One record for the whole run from every rank's metrics (collective).

        `*_max` keys take the maximum and `*_seconds` the maximum too (the slowest rank sets
        the pace); token counts, throughput, replayed and unique-program counts are summed;
        every other number is averaged. A value all ranks agree on (the step) is kept as it
        is; None values are left out.
        """
        if self.world_size == 1:
            return dict(metrics)
        every_rank = self.all_gather(dict(metrics))
        return {key: _combine(key, [rank[key] for rank in every_rank]) for key in every_rank[0]}

    def checkpoint_loop_state(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The loop state a checkpoint stores: as is for one process; for several, every
        rank's (each has its own RNG and next batch), on the main rank only (collective)."""
        if self.world_size == 1:
            return state
        states = self.gather_to_main(state)
        if states is None:
            return None
        return {"step": state["step"], "world_size": self.world_size, "ranks": states}

    def rank_loop_state(self, saved: dict[str, Any]) -> dict[str, Any]:
        """This rank's part of a loop state that checkpoint_loop_state stored."""
        ranks = saved.get("ranks")
        saved_world = 1 if ranks is None else len(ranks)
        if saved_world != self.world_size:
            raise ConfigError(
                f"the checkpoint was written by {saved_world} process(es); resume it with the "
                f"same number (this launch has {self.world_size})"
            )
        return saved if ranks is None else ranks[self.rank]


def _combine(key: str, values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if key in _SUMMED and numbers:
        return sum(numbers)
    if not numbers or all(v == values[0] for v in values):
        return values[0]
    if key.endswith(("_max", "_seconds")):
        return max(numbers)
    return sum(numbers) / len(numbers)
