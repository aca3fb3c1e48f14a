#!/usr/bin/env bash
# Train on every GPU of this machine through `accelerate launch`; the first argument
# picks the accelerate config: a name from accelerate_configs/ or a path to a YAML file.
#
# Usage:
#   launch/multi_gpu.sh multi_gpu                    # DDP on all GPUs
#   launch/multi_gpu.sh deepspeed_zero2 runner.train.batch_size=16
#   NUM_PROCESSES=4 launch/multi_gpu.sh deepspeed_zero3 policy=hf_qwen3_4b
#   ENV=peregrines POLICY=hf_qwen3_4b launch/multi_gpu.sh deepspeed_zero3_offload
#   launch/multi_gpu.sh cpu_2proc policy=mock        # two CPU processes, no GPU needed
#   launch/multi_gpu.sh multi_gpu resume=runs/dugongs-20261125-101500
#
# NUM_PROCESSES defaults to the number of visible GPUs (the config's count for cpu_2proc);
# MAIN_PROCESS_PORT (default 29500) must be free. runner.train.batch_size is the global
# batch and must split evenly over the processes. Arguments after the config are
# synthstats-train overrides, passed on unchanged. No arguments, -h or --help: this text.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | grep -v '^#SBATCH\|^set -euo' | sed 's/^# \{0,1\}//'; }
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi

if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
name="$1"
shift
config="$name"
if [[ ! -f "$config" ]]; then
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    config="$repo/accelerate_configs/${name%.yaml}.yaml"
fi
if [[ ! -f "$config" ]]; then
    echo "multi_gpu.sh: no accelerate config $name (a name in accelerate_configs/ or a file)" >&2
    exit 2
fi

launch=(--config_file "$config" --main_process_port "${MAIN_PROCESS_PORT:-29500}")
if [[ -n "${NUM_PROCESSES:-}" ]]; then
    launch+=(--num_processes "$NUM_PROCESSES")
elif [[ "$(basename "$config")" != cpu_* ]] && command -v nvidia-smi >/dev/null; then
    launch+=(--num_processes "$(nvidia-smi --list-gpus | wc -l)")
fi

exec accelerate launch "${launch[@]}" "$(command -v synthstats-train)" \
    runner=local env="${ENV:-dugongs}" policy="${POLICY:-hf_qwen3_0_6b}" "$@"
