"""Two CPU processes through real `accelerate launch`: DDP, DeepSpeed ZeRO-2 and ZeRO-3,
a two-node launch simulated on localhost, and the ZeRO-3 offload config.

Each run trains a tiny Qwen3 + LoRA for a couple of steps. tests/distributed_driver.py runs
synthstats-train's CLI on every rank and dumps each rank's trainable parameters, so the
ranks can be compared. DeepSpeed's first launch JIT-builds a small communication op
(about a minute, cached in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from synthstats.backends.mock_model import mock_model_folder
from synthstats.envs import get_env
from synthstats.train.checkpoint import latest_checkpoint, load_loop_state

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
DRIVER = Path(__file__).with_name("distributed_driver.py")
BIN = Path(sys.executable).parent
LAUNCH_TIMEOUT_S = 420
TOLERANCE = 1e-6

# accelerate config and launch flags of each two-process mode under test.
MODES = {
    "zero2": [f"--config_file={CONFIGS / 'deepspeed_zero2.yaml'}", "--num_processes=2"],
    "zero3": [f"--config_file={CONFIGS / 'deepspeed_zero3.yaml'}", "--num_processes=2"],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(flags: list[str], program: list[str], *, cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch FLAGS PROGRAM`, failing the test with its output if it fails."""
    command = [str(BIN / "accelerate"), "launch", *flags, *program]
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result


def train_arguments(run_dir: Path, demonstrations: Path, cache: Path) -> list[str]:
    return [
        "runner=local",
        "policy=mock",
        "env=dugongs",
        "judge=fast",
        "judge.workers=1",
        "judge.cache=true",
        f"judge.cache_path={cache}",
        "runner.train.steps=2",
        "runner.train.batch_size=4",
        "runner.train.replay_fraction=0.5",
        "policy.max_new_tokens=128",  # the reference demonstration is 123 tokens
        f"output_dir={run_dir}",
        "sft_warmstart.enabled=true",
        f"sft_warmstart.data_path={demonstrations}",
        "sft_warmstart.compute_rewards=true",
        "--no-progress",
    ]


def dumps(folder: Path, tag: str) -> list[dict[str, torch.Tensor]]:
    return [torch.load(folder / f"rank{rank}-{tag}.pt") for rank in (0, 1)]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def read_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def assert_ranks_agree_and_trained(
    final: list[dict], built: list[dict], *, any_valid: bool = True
) -> None:
    """Ranks hold the same weights and LoRA trained. log Z moves only when a batch held a
    valid program: with none (the untrained mock fails them all) only the failure term
    trains, and failures never pull log Z."""
    assert max_difference(final[0], final[1]) < TOLERANCE
    changed = [key for key in final[0] if not torch.equal(final[0][key], built[0][key])]
    assert any("lora_" in key for key in changed), changed
    assert ("log_z.values" in changed) == any_valid


def assert_adapter_matches(checkpoint: Path, trained: dict[str, torch.Tensor]) -> None:
    """The adapter loads with PEFT and holds the trained LoRA weights (full, not shards)."""
    base = AutoModelForCausalLM.from_pretrained(mock_model_folder())
    model = PeftModel.from_pretrained(base, checkpoint / "policy" / "adapter")
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert lora
    for name, param in lora.items():
        assert torch.allclose(param, trained[f"lm.{name}"], atol=TOLERANCE), name


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A folder, a demonstration holding the env's reference program (a valid program in
    the loss) and a judge cache shared by the runs, so it is scored once."""
    root = tmp_path_factory.mktemp("distributed")
    program = get_env("dugongs").reference_program.strip()
    demonstrations = root / "reference.jsonl"
    completion = f"```python\n{program}\n```"
    demonstrations.write_text(json.dumps({"prompt": "dugongs", "completion": completion}) + "\n")
    return root, demonstrations, root / "scores.sqlite"


def test_cpu_2proc_command_trains_ddp_and_resumes(workspace):
    """The README's command, exactly; then the run resumes under the same config."""
    root, _, _ = workspace
    cwd = root / "documented"
    cwd.mkdir()
    trainer = shutil.which("synthstats-train", path=str(BIN))
    config = str(CONFIGS / "cpu_2proc.yaml")
    launch(
        ["--config_file", config],
        [trainer, "runner=local", "policy=mock", "env=dugongs", "runner.train.steps=2"],
        cwd=cwd,
    )
    (run_dir,) = (cwd / "runs").iterdir()  # both ranks wrote into the main rank's folder
    assert read_steps(run_dir) == [0, 1]
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint.name == "step-000002"
    assert load_loop_state(checkpoint)["world_size"] == 2

    dump_dir = root / "ddp-dumps"
    launch(
        ["--config_file", config, f"--main_process_port={free_port()}"],
        [str(DRIVER), str(dump_dir), f"resume={run_dir}", "runner.train.steps=3", "--no-progress"],
        cwd=cwd,
    )
    assert read_steps(run_dir) == [0, 1, 2]
    assert latest_checkpoint(run_dir).name == "step-000003"
    loaded, final = dumps(dump_dir, "loaded"), dumps(dump_dir, "final")
    assert max_difference(loaded[0], loaded[1]) < TOLERANCE
    assert_adapter_matches(checkpoint, loaded[0])  # the resume loaded the saved adapter
    assert_ranks_agree_and_trained(final, loaded, any_valid=False)


@pytest.mark.parametrize("mode", list(MODES))
def test_deepspeed_two_ranks_train_save_and_resume(mode, workspace):
    root, demonstrations, cache = workspace
    run_dir, first, second = root / mode, root / f"{mode}-first", root / f"{mode}-second"
    flags = [*MODES[mode], f"--main_process_port={free_port()}"]
    program = [str(DRIVER), str(first), *train_arguments(run_dir, demonstrations, cache)]
    launch(flags, program, cwd=root)
    assert read_steps(run_dir) == [0, 1]
    trained = dumps(first, "final")
    assert_ranks_agree_and_trained(trained, dumps(first, "built"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # The reference program from the warm-start was replayed into the loss with its score.
    assert all(line["batch_reward_max"] > -20.0 and line["replayed"] >= 1 for line in metrics)
    checkpoint = latest_checkpoint(run_dir)
    assert (checkpoint / "policy" / "deepspeed").is_dir()
    assert_adapter_matches(checkpoint, trained[0])

    flags = [*MODES[mode], f"--main_process_port={free_port()}"]
    program = [str(DRIVER), str(second), f"resume={run_dir}", "runner.train.steps=3"]
    launch(flags, [*program, "--no-progress"], cwd=root)
    assert read_steps(run_dir) == [0, 1, 2]
    assert latest_checkpoint(run_dir).name == "step-000003"
    loaded = dumps(second, "loaded")
    assert max_difference(loaded[0], trained[0]) < TOLERANCE
    assert max_difference(loaded[1], trained[1]) < TOLERANCE
    assert_ranks_agree_and_trained(dumps(second, "final"), loaded)


def test_two_nodes_on_localhost_train_a_step(workspace):
    """multi_node.yaml as two machines of one process each, meeting at one main address."""
    root, _, _ = workspace
    run_dir = root / "two-nodes"
    port = free_port()
    trainer = shutil.which("synthstats-train", path=str(BIN))
    nodes = []
    for machine_rank in (0, 1):
        command = [
            str(BIN / "accelerate"),
            "launch",
            f"--config_file={CONFIGS / 'multi_node.yaml'}",
            "--num_machines=2",
            "--num_processes=2",
            f"--machine_rank={machine_rank}",
            "--main_process_ip=127.0.0.1",
            f"--main_process_port={port}",
            trainer,
            "runner=local",
            "policy=mock",
            "env=dugongs",
            "judge.workers=1",
            "judge.cache=false",
            "runner.train.steps=1",
            "runner.train.batch_size=2",
            "policy.max_new_tokens=128",  # the reference demonstration is 123 tokens
            f"output_dir={run_dir}",
            "--no-progress",
        ]
        nodes.append(
            subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=LAUNCH_TIMEOUT_S)[0].decode()[-4000:])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outputs)
    assert read_steps(run_dir) == [0]
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint.name == "step-000001"
    assert load_loop_state(checkpoint)["world_size"] == 2


def test_zero3_offload_config_dry_start(workspace):
    """Both ranks start under the offload config and see ZeRO-3 with CPU offload. A full
    step would first build DeepSpeed's cpu_adam op (minutes on 2 cores), so it is left out."""
    root, _, _ = workspace
    dump_dir = root / "offload"
    flags = [
        f"--config_file={CONFIGS / 'deepspeed_zero3_offload.yaml'}",
        "--num_processes=2",
        f"--main_process_port={free_port()}",
    ]
    launch(flags, [str(DRIVER), str(dump_dir), "--describe"], cwd=root)
    for rank in (0, 1):
        setup = json.loads((dump_dir / f"rank{rank}-setup.json").read_text())
        expected = {"processes": 2, "zero_stage": 3}
        assert setup == {**expected, "offload_optimizer": "cpu", "offload_param": "cpu"}
    print("ZeRO-3 offload: dry start only; a training step needs DeepSpeed's cpu_adam op")
