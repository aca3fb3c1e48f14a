"""`synthstats-train` on every rank of an `accelerate launch`, plus a dump of each rank's
trainable parameters, so tests/test_distributed.py can compare the ranks.

    accelerate launch --config_file CONFIG tests/distributed_driver.py DUMP_DIR [ARGS...]

writes DUMP_DIR/rank{R}-built.pt (just built), rank{R}-loaded.pt (after a resume loaded
its checkpoint) and rank{R}-final.pt (after training). Under ZeRO-3 the parameters are
gathered first, so every dump holds full tensors.

    accelerate launch --config_file CONFIG tests/distributed_driver.py DUMP_DIR --describe

only starts the process group and writes DUMP_DIR/rank{R}-setup.json: how the launch
configured this rank (processes, ZeRO stage, DeepSpeed offload devices).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import synthstats.train.run as run_module
from synthstats.cli import train


def trainable_parameters(backend) -> dict[str, torch.Tensor]:
    """Every trainable tensor of the policy (LoRA, log Z, flow); collective under ZeRO-3."""
    named = [(n, p) for n, p in backend.module.named_parameters() if p.requires_grad]
    return backend.distributed.full_state(named)


def describe(dump_dir: Path) -> None:
    from synthstats.backends.distributed import Distributed

    distributed = Distributed.from_environment()
    setup = {"processes": distributed.world_size, "zero_stage": distributed.zero_stage}
    if distributed.zero_stage is not None:
        zero = distributed.accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
        setup["offload_optimizer"] = zero["offload_optimizer"]["device"]
        setup["offload_param"] = zero["offload_param"]["device"]
    path = dump_dir / f"rank{distributed.rank}-setup.json"
    path.write_text(json.dumps(setup))
    distributed.barrier()


def main() -> None:
    dump_dir = Path(sys.argv[1])
    dump_dir.mkdir(parents=True, exist_ok=True)
    if sys.argv[2:] == ["--describe"]:
        describe(dump_dir)
        return
    built = []

    def dump(backend, tag: str) -> None:
        state = trainable_parameters(backend)
        torch.save(state, dump_dir / f"rank{backend.distributed.rank}-{tag}.pt")

    def build_and_watch(*args, **kwargs):
        backend = original_build(*args, **kwargs)
        built.append(backend)
        dump(backend, "built")
        original_load = backend.load

        def load_and_dump(directory):
            original_load(directory)
            dump(backend, "loaded")

        backend.load = load_and_dump
        return backend

    original_build = run_module.build_backend
    run_module.build_backend = build_and_watch
    code = 0
    try:
        train.main(sys.argv[2:], standalone_mode=False)
    except SystemExit as stop:
        code = stop.code or 0
    if built:
        dump(built[0], "final")
    sys.exit(code)


if __name__ == "__main__":
    main()
