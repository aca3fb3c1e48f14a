#!/usr/bin/env bash
# Train on this machine's one GPU (or its CPU): no launcher, one process.
#
# Usage:
#   launch/local.sh                                  # env dugongs, policy hf_qwen3_0_6b
#   ENV=peregrines POLICY=hf_qwen3_4b launch/local.sh runner.train.steps=200 logging=wandb
#   POLICY=mock launch/local.sh runner.train.steps=2 # a CPU smoke run
#   launch/local.sh resume=runs/dugongs-20261125-101500
#
# Arguments after the script name are synthstats-train overrides, passed on unchanged;
# -h or --help prints this.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | grep -v '^#SBATCH\|^set -euo' | sed 's/^# \{0,1\}//'; }
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi

exec synthstats-train runner=local env="${ENV:-dugongs}" policy="${POLICY:-hf_qwen3_0_6b}" "$@"
