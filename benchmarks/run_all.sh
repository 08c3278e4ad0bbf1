#!/usr/bin/env bash
# Runs the CPU benchmarks one after the other with their full settings.
#
#   benchmarks/run_all.sh            # from anywhere; results in benchmarks/results/
#
# On 2 cores: about 25 minutes, plus about 8 the first time (drawing the
# synthetic photos into benchmarks/.data/, ~2.8 GB). Run it on a quiet machine:
# each benchmark waits up to 3 minutes for the load average left by the one
# before to fall below 0.5, and marks its figures void when it does not.
# gpu_seed is not run here: it needs a GPU (see benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
failed=()
for benchmark in input_pipeline input_bound replicas precision allocator onednn steps_per_execution records; do
  echo
  "$python" -m "benchmarks.$benchmark" || failed+=("$benchmark")
done
echo
if ((${#failed[@]})); then
  echo "run_all: a variant failed in: ${failed[*]} (see FAILED lines above)"
  exit 1
fi
echo "run_all: all benchmarks ran; results in benchmarks/results/"
