#!/usr/bin/env bash
# Trains on a single-host Cloud TPU VM (v2-8, v3-8, v4-8, v5litepod-8, ...):
# creates the VM, copies this checkout and the data set to it, installs
# tensorflow-tpu and the trainer's other dependencies, and trains with
# --strategy=tpu --tpu=local. No Docker: the TPU VM runs TensorFlow directly.
#
#   launch/tpu_vm.sh --dry-run                 # print the commands, run nothing
#   DATA_DIR=data/nails launch/tpu_vm.sh       # create + copy + setup + train
#   launch/tpu_vm.sh train --config.train.epochs=10
#   launch/tpu_vm.sh delete
#
# Steps: create, copy, setup, train, fetch (results back here), delete; "all"
# (the default) is create, copy, setup, train. Arguments after the step go to
# the trainer.
#
# Environment (all optional):
#   TPU_NAME          (nailseg-tpu)       ZONE              (us-central2-b)
#   ACCELERATOR_TYPE  (v4-8)              RUNTIME_VERSION   (tpu-ubuntu2204-base)
#   PROJECT           (gcloud's default)  CONFIG            (configs/nail_unet_effb4.py)
#   DATA_DIR          local data set folder to copy (data/synthetic)
#   TF_TPU_VERSION    tensorflow-tpu release (2.20.0)
#   RESULTS_DIR       where `fetch` puts the work directory (runs/tpu)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
step="${1:-all}"
if (($# > 0)); then shift; fi

tpu_name="${TPU_NAME:-nailseg-tpu}"
zone="${ZONE:-us-central2-b}"
accelerator_type="${ACCELERATOR_TYPE:-v4-8}"
runtime_version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
config="${CONFIG:-configs/nail_unet_effb4.py}"
data_dir="${DATA_DIR:-data/synthetic}"
tf_tpu_version="${TF_TPU_VERSION:-2.20.0}"
results_dir="${RESULTS_DIR:-runs/tpu}"
archive="${TMPDIR:-/tmp}/nailseg-src.tar.gz"

# Where things live on the VM, relative to the user's home there.
remote_src=nailseg
remote_data=nailseg-data
remote_workdir=nailseg-runs/tpu

gcloud_flags=("--zone=$zone")
if [[ -n "${PROJECT:-}" ]]; then gcloud_flags+=("--project=$PROJECT"); fi

# Prints a command as it would be typed (quoting words that need it); runs it
# unless this is a dry run.
run() {
    local word quoted=()
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            quoted+=("$word")
        else
            quoted+=("'${word//\'/\'\\\'\'}'")
        fi
    done
    printf '%s\n' "${quoted[*]}"
    if ((dry_run == 0)); then "$@"; fi
}

ssh_all() {
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${gcloud_flags[@]}" --worker=all \
        --command="$1"
}

# The project's dependencies except TensorFlow and tf-keras, which come in the
# TPU build's versions (the `tensorflow` wheel would shadow tensorflow-tpu).
other_dependencies() {
    python3 - "$repo/pyproject.toml" <<'EOF'
import re
import sys

text = open(sys.argv[1]).read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
names = re.findall(r'"([^"]+)"', block)
print(" ".join(repr(n) for n in names if not n.startswith(("tensorflow", "tf-keras"))))
EOF
}

create() {
    run gcloud compute tpus tpu-vm create "$tpu_name" "${gcloud_flags[@]}" \
        --accelerator-type="$accelerator_type" --version="$runtime_version"
}

copy() {
    # The checkout without its virtual environment, results or data; anchored
    # with ./ so that trainer/data (a package) stays in.
    run tar -czf "$archive" -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./runs \
        --exclude=./data --exclude=./wandb --exclude=__pycache__ .
    run gcloud compute tpus tpu-vm scp "$archive" "$tpu_name:~/nailseg-src.tar.gz" \
        "${gcloud_flags[@]}" --worker=all
    run gcloud compute tpus tpu-vm scp --recurse "$data_dir" "$tpu_name:~/$remote_data" \
        "${gcloud_flags[@]}" --worker=all
}

setup() {
    local deps
    deps="$(other_dependencies)"
    # tf-keras without its dependencies: they name `tensorflow`, which would
    # install the CPU wheel next to tensorflow-tpu.
    ssh_all "set -e; rm -rf ~/$remote_src; mkdir -p ~/$remote_src; \
tar -xzf ~/nailseg-src.tar.gz -C ~/$remote_src; cd ~/$remote_src; \
python3 -m pip install --user 'tensorflow-tpu==$tf_tpu_version' \
-f https://storage.googleapis.com/libtpu-tf-releases/index.html; \
python3 -m pip install --user --no-deps 'tf-keras==${tf_tpu_version%.*}.*'; \
python3 -m pip install --user $deps; \
python3 -m pip install --user --no-deps -e ."
}

train() {
    local args="" arg
    for arg in "$@"; do args+=" $(printf '%q' "$arg")"; done
    # albumentations runs through tf.numpy_function on the VM's own CPUs, which
    # a TPU VM allows (the older TPU Node architecture did not).
    ssh_all "set -e; cd ~/$remote_src; python3 -m trainer.train --strategy=tpu --tpu=local \
--config=$config --data_root=\$HOME/$remote_data --workdir=\$HOME/$remote_workdir$args"
}

fetch() {
    run mkdir -p "$results_dir"
    run gcloud compute tpus tpu-vm scp --recurse "$tpu_name:~/$remote_workdir" "$results_dir" \
        "${gcloud_flags[@]}" --worker=0
}

delete() {
    run gcloud compute tpus tpu-vm delete "$tpu_name" "${gcloud_flags[@]}" --quiet
}

case "$step" in
    all) create && copy && setup && train "$@" ;;
    create | copy | setup | fetch | delete) "$step" ;;
    train) train "$@" ;;
    *)
        echo "unknown step '$step'; use all, create, copy, setup, train, fetch or delete" >&2
        exit 2
        ;;
esac
