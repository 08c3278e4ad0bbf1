#!/usr/bin/env bash
# Trains on this machine: python -m trainer.train with defaults for everything.
#
#   launch/local.sh                                   # the CPU demo on the synthetic data
#   CONFIG=configs/nail_unet_effb4.py DATA_ROOT=/data/nails launch/local.sh --config.train.epochs=10
#
# Environment (all optional; the defaults are in the repository, wherever this
# is run from):
#   CONFIG     config file                 (configs/demo_cpu.py)
#   DATA_ROOT  data set folder             (data/synthetic, made on first use)
#   WORKDIR    results and checkpoints     (runs/<config name>); a rerun resumes
#   STRATEGY   tf.distribute strategy      (mirrored with 2+ GPUs, else one_device)
#   PYTHON     interpreter                 (.venv/bin/python if present, else python3)
#   DRY_RUN=1  print the command instead of running it
# Arguments are passed on to the trainer after the defaults, so they override
# them (--strategy=..., --config.train.steps=...).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The trainer is importable from any directory, installed or not.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

config="${CONFIG:-$repo/configs/demo_cpu.py}"
data_root="${DATA_ROOT:-$repo/data/synthetic}"
workdir="${WORKDIR:-$repo/runs/$(basename "$config" .py)}"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
    python="$repo/.venv/bin/python"
else
    python=python3
fi

if [[ -n "${STRATEGY:-}" ]]; then
    strategy="$STRATEGY"
else
    # MirroredStrategy refuses a single device, so it is chosen only with 2+ GPUs.
    num_gpus=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        num_gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
    fi
    if ((num_gpus >= 2)); then strategy=mirrored; else strategy=one_device; fi
fi

command=("$python" -m trainer.train "--config=$config" "--data_root=$data_root"
    "--workdir=$workdir" "--strategy=$strategy" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${command[@]}"
    printf '\n'
    exit 0
fi

# The synthetic set is made only at its default place: a missing folder given
# by the user is a mistake that the trainer reports.
if [[ -z "${DATA_ROOT:-}" && ! -d "$data_root/Images" ]]; then
    "$python" -m trainer.synthetic --output_dir="$data_root"
fi
exec "${command[@]}"
