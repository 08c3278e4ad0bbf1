#!/usr/bin/env bash
# Trains on a Cloud TPU VM: creates it, copies this checkout (and the data set)
# to it, installs tensorflow-tpu and the trainer's other dependencies, and
# trains with --strategy=tpu. No Docker: the TPU VM runs TensorFlow directly.
#
#   launch/tpu_vm.sh --dry-run                 # print the commands, run nothing
#   DATA_DIR=data/nails launch/tpu_vm.sh       # create + copy + setup + train
#   launch/tpu_vm.sh train --config.train.epochs=10
#   launch/tpu_vm.sh delete
#
# Single-host slices (v2-8, v3-8, v4-8, v5p-8, v5litepod-8, v6e-8 and smaller):
# the data set is copied to the VM and the trainer runs there with --tpu=local.
#
# Multi-host slices (pod slices: the number after the type's last dash is more
# than 8, e.g. v4-16, v4-32, v5p-16, v5litepod-16, v6e-16, v2-32, v3-32): each
# host is a VM of its own, so the data set and the work directory live in
# Cloud Storage (DATA_URL, WORKDIR_URL, both gs://) and nothing is copied but
# the code. TensorFlow drives a pod slice from one client process: the trainer
# runs on worker 0 with --tpu=$TPU_NAME (and TPU_LOAD_LIBRARY=0, since the
# host's TPU server owns its chips), and distribute_datasets_from_function
# gives every host its own input pipeline and shard of the file names. The
# TPU server on each host comes with the runtime tpu-vm-tf-VERSION-pod-pjrt.
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
#   DATA_URL          the data set in Cloud Storage (gs://...): not copied; a
#                     multi-host slice needs it (and refuses DATA_DIR)
#   WORKDIR_URL       the work directory in Cloud Storage (gs://...); a
#                     multi-host slice needs it
#   TF_TPU_VERSION    tensorflow-tpu release (2.20.0)
#   RESULTS_DIR       where `fetch` puts the work directory (runs/tpu)
# RUNTIME_VERSION defaults to tpu-vm-tf-$TF_TPU_VERSION-pod-pjrt on a
# multi-host slice.
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
config="${CONFIG:-configs/nail_unet_effb4.py}"
data_dir="${DATA_DIR:-data/synthetic}"
data_url="${DATA_URL:-}"
workdir_url="${WORKDIR_URL:-}"
tf_tpu_version="${TF_TPU_VERSION:-2.20.0}"
results_dir="${RESULTS_DIR:-runs/tpu}"
archive="${TMPDIR:-/tmp}/nailseg-src.tar.gz"

# Where things live on the VM, relative to the user's home there.
remote_src=nailseg
remote_data=nailseg-data
remote_workdir=nailseg-runs/tpu

fail() {
    echo "error: $1" >&2
    exit 2
}

# The number after the last dash counts TensorCores (v2, v3, v4, v5p: 8 per
# host) or chips (v5litepod, v6e: at most 8 on a single-host VM); past 8 the
# slice spans several hosts.
slice_size="${accelerator_type##*-}"
if [[ ! "$slice_size" =~ ^[0-9]+$ ]]; then
    fail "ACCELERATOR_TYPE=$accelerator_type is not TYPE-SIZE; give e.g. v4-8 or v4-32"
fi
multi_host=0
if ((10#$slice_size > 8)); then multi_host=1; fi

if ((multi_host)); then
    runtime_version="${RUNTIME_VERSION:-tpu-vm-tf-$tf_tpu_version-pod-pjrt}"
else
    runtime_version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
fi

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

# Runs a shell command on the VM's hosts: `ssh_on all CMD` or `ssh_on 0 CMD`.
ssh_on() {
    run gcloud compute tpus tpu-vm ssh "$tpu_name" "${gcloud_flags[@]}" --worker="$1" \
        --command="$2"
}

# A multi-host slice reads the data and writes the work directory in Cloud
# Storage: a folder on one host is not on the others.
check_pod_storage() {
    if ((multi_host == 0)); then return; fi
    local where="$accelerator_type spans several hosts"
    if [[ -n "${DATA_DIR:-}" ]]; then
        fail "DATA_DIR=$DATA_DIR: $where, which cannot share a local folder; copy it to Cloud Storage and give DATA_URL=gs://BUCKET/PATH instead"
    fi
    if [[ "$data_url" != gs://?* ]]; then
        fail "DATA_URL='$data_url': $where and needs the data set in Cloud Storage; give DATA_URL=gs://BUCKET/PATH"
    fi
    if [[ "$workdir_url" != gs://?* ]]; then
        fail "WORKDIR_URL='$workdir_url': $where and needs the work directory in Cloud Storage; give WORKDIR_URL=gs://BUCKET/PATH"
    fi
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
    if [[ -z "$data_url" ]]; then
        run gcloud compute tpus tpu-vm scp --recurse "$data_dir" "$tpu_name:~/$remote_data" \
            "${gcloud_flags[@]}" --worker=all
    fi
}

setup() {
    local deps
    deps="$(other_dependencies)"
    # tf-keras without its dependencies: they name `tensorflow`, which would
    # install the CPU wheel next to tensorflow-tpu.
    ssh_on all "set -e; rm -rf ~/$remote_src; mkdir -p ~/$remote_src; \
tar -xzf ~/nailseg-src.tar.gz -C ~/$remote_src; cd ~/$remote_src; \
python3 -m pip install --user 'tensorflow-tpu==$tf_tpu_version' \
-f https://storage.googleapis.com/libtpu-tf-releases/index.html; \
python3 -m pip install --user --no-deps 'tf-keras==${tf_tpu_version%.*}.*'; \
python3 -m pip install --user $deps; \
python3 -m pip install --user --no-deps -e ."
}

train() {
    local args="" arg data_root="\$HOME/$remote_data" workdir="\$HOME/$remote_workdir"
    for arg in "$@"; do args+=" $(printf '%q' "$arg")"; done
    if [[ -n "$data_url" ]]; then data_root="$(printf '%q' "$data_url")"; fi
    if [[ -n "$workdir_url" ]]; then workdir="$(printf '%q' "$workdir_url")"; fi
    # albumentations runs through tf.numpy_function on the VM's own CPUs, which
    # a TPU VM allows (the older TPU Node architecture did not).
    if ((multi_host)); then
        ssh_on 0 "set -e; cd ~/$remote_src; TPU_NAME=$tpu_name TPU_LOAD_LIBRARY=0 \
python3 -m trainer.train --strategy=tpu --tpu=$tpu_name \
--config=$config --data_root=$data_root --workdir=$workdir$args"
    else
        ssh_on all "set -e; cd ~/$remote_src; python3 -m trainer.train --strategy=tpu --tpu=local \
--config=$config --data_root=$data_root --workdir=$workdir$args"
    fi
}

fetch() {
    run mkdir -p "$results_dir"
    if [[ -n "$workdir_url" ]]; then
        run gcloud storage cp --recursive "$workdir_url" "$results_dir"
        return
    fi
    run gcloud compute tpus tpu-vm scp --recurse "$tpu_name:~/$remote_workdir" "$results_dir" \
        "${gcloud_flags[@]}" --worker=0
}

delete() {
    run gcloud compute tpus tpu-vm delete "$tpu_name" "${gcloud_flags[@]}" --quiet
}

case "$step" in
    all | copy | train | fetch) check_pod_storage ;;
esac
case "$step" in
    all) create && copy && setup && train "$@" ;;
    create | copy | setup | fetch | delete) "$step" ;;
    train) train "$@" ;;
    *)
        echo "unknown step '$step'; use all, create, copy, setup, train, fetch or delete" >&2
        exit 2
        ;;
esac
