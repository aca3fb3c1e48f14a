#!/usr/bin/env bash
# Train on Thinking Machines' hosted Tinker service from any machine; no GPU needed.
# Sampling and LoRA updates run on the service; the judge (PyMC), log Z and the flow
# network run here, so a few CPU cores are enough.
#
# Usage:
#   export TINKER_API_KEY=...          # or `tinker auth login` once
#   launch/tinker.sh                   # env dugongs, policy Qwen/Qwen3-8B
#   ENV=peregrines launch/tinker.sh runner.train.steps=200 logging=wandb
#   launch/tinker.sh policy.model_name=Qwen/Qwen3-30B-A3B   # a family in the README's table
#   # another model: policy.tokenizer=HUB_ID policy.chat_format=FORMAT policy.head_size=N
#   launch/tinker.sh resume=runs/dugongs-20261125-101500
#
# Arguments after the script name are synthstats-train overrides, passed on unchanged;
# -h or --help prints this.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | grep -v '^#SBATCH\|^set -euo' | sed 's/^# \{0,1\}//'; }
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi

exec synthstats-train runner=tinker policy=tinker env="${ENV:-dugongs}" "$@"
