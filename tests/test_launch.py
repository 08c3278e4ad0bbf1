"""The launchers in launch/: local, multi-worker here, cluster commands, TFJob, TPU VM."""

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from launch import cluster_commands, multi_worker_local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
# A stand-in for trainer.train: worker 1 fails at once, the others would wait.
FAILING_WORKER = """
import json, os, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
print("started", index, flush=True)
if index == 1:
    sys.exit(3)
time.sleep(60)
"""
SUCCEEDING_WORKER = """
import json, os, sys
config = json.loads(os.environ["TF_CONFIG"])
print("worker", config["task"]["index"], "of", config["cluster"]["worker"], sys.argv[1:])
"""


# --- multi_worker_local -------------------------------------------------------------


def test_tf_configs_describe_one_cluster_with_one_task_each():
    addresses = ["127.0.0.1:1111", "127.0.0.1:2222", "127.0.0.1:3333"]
    configs = multi_worker_local.tf_configs(addresses)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"] == {"worker": addresses} for c in configs)


def test_free_ports_are_distinct():
    ports = multi_worker_local.free_ports(4)
    assert len(set(ports)) == 4 and all(0 < p < 65536 for p in ports)


def test_worker_command_adds_the_strategy_unless_given():
    command = multi_worker_local.worker_command(["--workdir=w"], python="py")
    assert command == [
        "py",
        "-m",
        "trainer.train",
        "--workdir=w",
        "--strategy=multi_worker_mirrored",
    ]
    given = multi_worker_local.worker_command(["--strategy=mirrored"], python="py")
    assert given.count("--strategy=mirrored") == 1 and len(given) == 4


def test_worker_env_gives_each_worker_its_gpus():
    config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    env = multi_worker_local.worker_env(config, 1, gpus_per_worker=2)
    assert json.loads(env["TF_CONFIG"]) == config
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == REPO


def _fake_trainer(tmp_path, monkeypatch, source):
    (tmp_path / "fake_trainer.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_one_failed_worker_stops_the_others_and_sets_the_exit_status(tmp_path, monkeypatch, capsys):
    _fake_trainer(tmp_path, monkeypatch, FAILING_WORKER)
    started = time.monotonic()
    status = multi_worker_local.run_workers(
        ["--x=1"], num_workers=3, module="fake_trainer", timeout_s=50, log_dir=str(tmp_path / "l")
    )
    assert status == 3
    assert time.monotonic() - started < 30  # the sleeping workers were stopped
    out = capsys.readouterr().out
    assert "[worker 1] started 1" in out and "worker 1 exited with 3" in out
    assert (tmp_path / "l" / "worker_1.log").read_text() == "started 1\n"


def test_all_workers_succeeding_exit_zero_with_prefixed_logs(tmp_path, monkeypatch, capsys):
    _fake_trainer(tmp_path, monkeypatch, SUCCEEDING_WORKER)
    status = multi_worker_local.run_workers(["--a=b"], num_workers=2, module="fake_trainer")
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    for index in range(2):
        (line,) = [x for x in lines if x.startswith(f"[worker {index}] worker {index} of")]
        assert "['--a=b', '--strategy=multi_worker_mirrored']" in line


def test_launcher_times_out_instead_of_hanging(tmp_path, monkeypatch):
    _fake_trainer(tmp_path, monkeypatch, "import time\ntime.sleep(60)\n")
    status = multi_worker_local.run_workers(
        ["--a"], num_workers=2, module="fake_trainer", timeout_s=2
    )
    assert status == 124


def test_launcher_command_line_needs_trainer_flags():
    with pytest.raises(SystemExit):
        multi_worker_local.main(["--num_workers=2"])


def _multi_worker_run(tiny_args, synthetic_root, workdir, worker_tmp, steps):
    """Runs the launcher's command line with 2 CPU workers; returns what the test checks."""
    worker_tmp.mkdir(exist_ok=True)
    # Workers' temporary files go to TMPDIR; a private one shows what they leave behind.
    env = dict(os.environ, TMPDIR=str(worker_tmp))
    started = time.monotonic()
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.multi_worker_local",
            "--num_workers=2",
            "--timeout_s=500",
            "--",
            *tiny_args,
            f"--config.train.steps={steps}",
            "--num_cpu_devices=1",
            f"--data_root={synthetic_root}",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    metrics = workdir / "metrics.jsonl"
    return {
        "returncode": process.returncode,
        "stdout": process.stdout,
        "seconds": time.monotonic() - started,
        "names": set(os.listdir(workdir)) if workdir.exists() else set(),
        "records": [json.loads(x) for x in metrics.read_text().splitlines()]
        if metrics.exists()
        else [],
        "worker_tmp": os.listdir(worker_tmp),
        "workdir": workdir,
    }


@pytest.fixture(scope="module")
def multi_worker_runs(tiny_args, synthetic_root, tmp_path_factory):
    """Two workers train 2 steps, then resume to 4 on the same work directory."""
    tmp_path = tmp_path_factory.mktemp("multi_worker")
    run = functools.partial(
        _multi_worker_run,
        tiny_args,
        synthetic_root,
        tmp_path / "workdir",
        tmp_path / "worker_tmp",
    )
    first = run(steps=2)
    second = run(steps=4) if first["returncode"] == 0 else None
    return first, second


def _worker_lines(stdout, index):
    return [line for line in stdout.splitlines() if line.startswith(f"[worker {index}]")]


CHIEF_FILES = {"metrics.jsonl", "config.json", "export", "checkpoints"}
# What else a run may write; anything outside these would be a worker's stray copy.
RUN_FILES = CHIEF_FILES | {"best", "tb", "curves.png", "samples", "csv_file", "cache"}


@pytest.mark.slow
def test_two_local_workers_train_and_only_the_chief_writes(multi_worker_runs):
    first, _ = multi_worker_runs
    assert first["returncode"] == 0, first["stdout"][-6000:]
    assert "[launcher] done" in first["stdout"]
    assert any("Training done: best valid IoU" in x for x in _worker_lines(first["stdout"], 0))
    assert not any("Training done" in x for x in _worker_lines(first["stdout"], 1))
    assert CHIEF_FILES <= first["names"] <= RUN_FILES, first["names"]
    config = json.loads((first["workdir"] / "config.json").read_text())
    assert config["run"]["num_replicas"] == 2 and config["run"]["per_replica_batch_size"] == 2
    assert [(r["step"], r["split"]) for r in first["records"]] == [(2, "train"), (2, "valid")]
    assert first["worker_tmp"] == []  # the non-chief's temporary directories are gone
    assert "Traceback" not in first["stdout"], first["stdout"][-6000:]
    print(f"2 workers, 2 steps: {first['seconds']:.0f} s; workdir: {sorted(first['names'])}")


@pytest.mark.slow
def test_two_local_workers_resume_from_the_chiefs_checkpoint(multi_worker_runs):
    _, second = multi_worker_runs
    assert second is not None, "the first run failed"
    assert second["returncode"] == 0, second["stdout"][-6000:]
    for index in range(2):
        lines = _worker_lines(second["stdout"], index)
        assert any("Resumed from checkpoint at step 2" in x for x in lines), index
    assert [r["step"] for r in second["records"]] == [2, 2, 4, 4]
    assert second["names"] <= RUN_FILES and second["worker_tmp"] == []
    assert "Traceback" not in second["stdout"], second["stdout"][-6000:]


def _start_workers(args, configs, logs):
    workers = []
    for index, log in enumerate(logs):
        with open(log, "w") as out:
            workers.append(
                subprocess.Popen(
                    multi_worker_local.worker_command(args),
                    cwd=REPO,
                    env=multi_worker_local.worker_env(configs[index], index, None),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    return workers


def _checkpoint_steps(workdir):
    """Steps of the checkpoints saved so far (files checkpoints/ckpt-STEP.index)."""
    indexes = (workdir / "checkpoints").glob("*.index")
    return [int(index.name.split("-")[1].split(".")[0]) for index in indexes]


def _wait_for_checkpoint(workdir, after_step, workers, logs):
    """Waits up to 300 s for a checkpoint past `after_step`, every worker running meanwhile."""
    deadline = time.monotonic() + 300
    while max(_checkpoint_steps(workdir), default=0) <= after_step:
        assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
        assert all(w.poll() is None for w in workers), logs[0].read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [(1,), (0, 1)], ids=["one_worker", "every_worker"])
def test_sigterm_stops_all_workers_at_the_same_step_then_both_resume(
    tiny_args, synthetic_root, tmp_path, signalled
):
    """A preempted VM or evicted pod signals one worker; the others must not hang.

    A deleted job signals every worker: they too stop at one step. Both
    cases leave the same checkpoint; resuming from it is tested in the first.

    Multi-worker runs stop through TensorFlow's PreemptionCheckpointHandler
    (trainer/preemption.py), which owns SIGTERM off GCE: the signalled worker
    names the step that every worker saves at.
    """
    workdir = tmp_path / "workdir"
    args = [
        *tiny_args,
        "--config.train.eval_every=100",
        "--config.train.checkpoint_every=2",
        "--num_cpu_devices=1",
        f"--data_root={synthetic_root}",
        f"--workdir={workdir}",
    ]

    def cluster():
        return multi_worker_local.tf_configs(
            [f"127.0.0.1:{port}" for port in multi_worker_local.free_ports(2)]
        )

    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = _start_workers([*args, "--config.train.steps=400"], cluster(), logs)
    try:
        _wait_for_checkpoint(workdir, 0, workers, logs)  # the first one, while training
        for index in signalled:
            workers[index].send_signal(signal.SIGTERM)
        sent = time.monotonic()
        codes = [w.wait(timeout=120) for w in workers]
        stop_s = time.monotonic() - sent
    finally:
        for worker in workers:
            worker.kill()
    texts = [log.read_text() for log in logs]
    assert "Preemption: SIGTERM goes to PreemptionCheckpointHandler" in texts[1], texts[1][-3000:]
    # Both interrupted and resumable (128 + SIGTERM), the one not signalled too;
    # never TensorFlow's exit code 42.
    assert codes == [143, 143], texts[0][-3000:] + texts[1][-3000:]
    stopped = re.search(r"Stopped by SIGTERM at step (\d+);", texts[1])
    assert stopped, texts[1][-3000:]
    step = int(stopped.group(1))
    by = "SIGTERM" if 0 in signalled else "a preemption notice"
    assert f"Stopped by {by} at step {step};" in texts[0], texts[0][-3000:]
    assert 0 < step < 400
    assert (workdir / "checkpoints" / f"ckpt-{step}.index").exists()
    print(f"both workers exited 143 at step {step}, {stop_s:.1f} s after SIGTERM")
    if signalled != (1,):
        return  # resuming after every worker stopped is the same as after one: tested once

    restarted = _start_workers([*args, f"--config.train.steps={step + 4}"], cluster(), logs)
    try:
        codes = [worker.wait(timeout=600) for worker in restarted]
    finally:
        for worker in restarted:
            worker.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    for text in texts:
        assert f"Resumed from checkpoint at step {step}" in text, text[-3000:]
        # The non-chief still exporting when the chief exits used to print TF's
        # preemption watcher's traceback ("Socket closed", "cannot join current thread").
        assert "Traceback" not in text, text[-3000:]
    assert "Training done" in texts[0]


@pytest.mark.slow
def test_a_stalled_worker_is_waited_for_and_a_killed_one_stops_the_other_then_both_resume(
    tiny_args, synthetic_root, tmp_path
):
    """A worker frozen for 20 s (a busy host) must not fail the job; kill -9 (a lost node) must.

    TensorFlow's own heartbeat timeout is 10 s: the stall failed whole runs
    before distribute.HEARTBEAT_TIMEOUT_S. After kill -9 the survivor must not
    hang in its next all-reduce.
    """
    workdir = tmp_path / "workdir"
    args = [
        *tiny_args,
        "--config.train.steps=40",
        "--config.train.eval_every=8",
        "--config.train.checkpoint_every=4",
        "--num_cpu_devices=1",
        f"--data_root={synthetic_root}",
        f"--workdir={workdir}",
    ]

    def cluster():
        return multi_worker_local.tf_configs(
            [f"127.0.0.1:{port}" for port in multi_worker_local.free_ports(2)]
        )

    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = _start_workers(args, cluster(), logs)
    try:
        _wait_for_checkpoint(workdir, 0, workers, logs)
        stalled_at = max(_checkpoint_steps(workdir))
        workers[1].send_signal(signal.SIGSTOP)
        time.sleep(20)
        workers[1].send_signal(signal.SIGCONT)
        _wait_for_checkpoint(workdir, stalled_at, workers, logs)  # both went on training
        workers[1].kill()
        killed_at = time.monotonic()
        code = workers[0].wait(timeout=150)
        detected_s = time.monotonic() - killed_at
    finally:
        for worker in workers:
            worker.kill()
    text = logs[0].read_text()
    assert code == 129, text[-3000:]  # interrupted and resumable
    assert detected_s < 120, detected_s
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lost contact with worker 1" in errors[0], text[-3000:]
    assert "start every worker again" in errors[0]
    print(f"worker 0 exited {detected_s:.1f} s after worker 1 was killed: {errors[0]}")

    restarted = _start_workers(args, cluster(), logs)
    try:
        codes = [worker.wait(timeout=600) for worker in restarted]
    finally:
        for worker in restarted:
            worker.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    resumed = re.search(r"Resumed from checkpoint at step (\d+)", texts[0])
    assert resumed and int(resumed.group(1)) > stalled_at, texts[0][-3000:]
    assert "Training done" in texts[0]


# --- cluster_commands ---------------------------------------------------------------


def _tf_config_of(words):
    (assignment,) = [w for w in words if w.startswith("TF_CONFIG=")]
    return json.loads(assignment.split("=", 1)[1])


def test_cluster_commands_give_each_host_its_task(capsys):
    cluster_commands.main(
        ["--hosts=gpu1,gpu2,gpu3:3000", "--port=2222", "--", "--config=c.py", "--workdir=/w"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# on gpu1 (worker 0, the chief)" and lines[4] == "# on gpu3:3000 (worker 2)"
    commands = [shlex.split(line) for line in lines[1::2]]
    for index, words in enumerate(commands):
        config = _tf_config_of(words)
        assert config["cluster"]["worker"] == ["gpu1:2222", "gpu2:2222", "gpu3:3000"]
        assert config["task"] == {"type": "worker", "index": index}
        after = words[words.index("trainer.train") + 1 :]
        assert after == ["--config=c.py", "--workdir=/w", "--strategy=multi_worker_mirrored"]


def test_cluster_commands_for_docker_use_host_networking_and_the_image():
    commands = cluster_commands.host_commands(
        ["a", "b"],
        ["--data_root=/data", "--workdir=/work"],
        docker_image="registry/nailseg:1",
        docker_volumes=("/nfs/data:/data:ro", "/nfs/runs:/work"),
    )
    words = shlex.split(commands[1][1])
    assert words[:3] == ["docker", "run", "--rm"]
    assert "--network" in words and words[words.index("--network") + 1] == "host"
    assert words[words.index("-e") + 1].startswith("TF_CONFIG=")
    config = json.loads(words[words.index("-e") + 1].split("=", 1)[1])
    assert config["task"]["index"] == 1
    image = words.index("registry/nailseg:1")
    assert words[image + 1 :] == [
        "--data_root=/data",
        "--workdir=/work",
        "--strategy=multi_worker_mirrored",
    ]
    assert ["-v", "/nfs/data:/data:ro"] == words[words.index("-v") : words.index("-v") + 2]


def test_cluster_commands_over_ssh_quote_the_remote_command():
    (_, command), _ = cluster_commands.host_commands(
        ["h1", "h2"], ["--workdir=/shared/run 1"], ssh=True, remote_dir="/opt/nailseg"
    )
    ssh, host, remote = shlex.split(command)
    assert (ssh, host) == ("ssh", "h1")
    words = shlex.split(remote)
    assert words[:3] == ["cd", "/opt/nailseg", "&&"]
    assert _tf_config_of(words)["task"]["index"] == 0
    assert "--workdir=/shared/run 1" in words


# --- Kubernetes TFJob ---------------------------------------------------------------


def test_tfjob_manifest_is_a_tfjob_of_gpu_workers_on_shared_volumes():
    with open(os.path.join(LAUNCH, "k8s", "tfjob.yaml")) as f:
        job = yaml.safe_load(f)
    with open(os.path.join(LAUNCH, "k8s", "volumes.yaml")) as f:
        documents = list(yaml.safe_load_all(f))
    assert [d["kind"] for d in documents] == ["PersistentVolumeClaim"] * 2
    claims = {d["metadata"]["name"]: d for d in documents}
    assert job["kind"] == "TFJob" and job["apiVersion"] == "kubeflow.org/v1"
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert set(job["spec"]["tfReplicaSpecs"]) == {"Worker"}  # worker 0 is the chief
    assert worker["replicas"] >= 2
    # Restart on 128+ (interrupted, resumable), never on a user error (exit 2).
    assert worker["restartPolicy"] == "ExitCode"
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "tensorflow"  # the name the training operator looks for
    assert container["image"]
    assert "--strategy=multi_worker_mirrored" in container["args"]
    args = dict(a.split("=", 1) for a in container["args"])
    assert args["--config"].startswith("configs/")
    assert os.path.exists(os.path.join(REPO, args["--config"]))
    assert args["--data_root"] == "/data" and args["--workdir"].startswith("/work")
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert mounts["data"]["mountPath"] == "/data" and mounts["data"]["readOnly"] is True
    assert mounts["work"]["mountPath"] == "/work"
    assert set(volumes.values()) == set(claims)
    # Every worker mounts the work directory: the chief writes, all restore.
    assert "ReadWriteMany" in claims[volumes["work"]]["spec"]["accessModes"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000  # the Dockerfile's USER


# --- Shell launchers ----------------------------------------------------------------


@pytest.mark.parametrize("script", ["local.sh", "tpu_vm.sh"])
def test_shell_launchers_pass_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    path = os.path.join(LAUNCH, script)
    result = subprocess.run(["shellcheck", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert os.access(path, os.X_OK)
    with open(path) as f:
        assert "set -euo pipefail" in f.read()


def _run_script(script, *args, **env):
    return subprocess.run(
        ["bash", os.path.join(LAUNCH, script), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **env),
        timeout=60,
    )


def test_local_launcher_passes_arguments_after_its_defaults():
    result = _run_script("local.sh", "--config.train.steps=3", DRY_RUN="1", STRATEGY="mirrored")
    assert result.returncode == 0, result.stderr
    words = shlex.split(result.stdout)
    assert words[1:3] == ["-m", "trainer.train"]
    assert f"--config={REPO}/configs/demo_cpu.py" in words
    assert words[-2:] == ["--strategy=mirrored", "--config.train.steps=3"]
    assert os.path.exists(words[words.index(f"--config={REPO}/configs/demo_cpu.py")][9:])


def test_tpu_vm_dry_run_prints_create_setup_and_train():
    result = _run_script(
        "tpu_vm.sh",
        "--dry-run",
        "all",
        "--config.train.epochs=3",
        TPU_NAME="my-tpu",
        ZONE="europe-west4-a",
        ACCELERATOR_TYPE="v3-8",
        DATA_DIR="/nails",
        PROJECT="proj",
    )
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    create = commands[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert {"my-tpu", "--zone=europe-west4-a", "--accelerator-type=v3-8", "--project=proj"} <= set(
        create
    )
    ssh = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
    setup, train = (c[-1].removeprefix("--command=") for c in ssh)
    assert "tensorflow-tpu==2.20.0" in setup and "libtpu-tf-releases" in setup
    assert "'segmentation-models==1.0.1'" in setup
    # The `tensorflow` wheel would shadow tensorflow-tpu: neither it nor tf-keras' deps.
    assert "tensorflow>=" not in setup and "--no-deps 'tf-keras==2.20.*'" in setup
    assert "python3 -m trainer.train --strategy=tpu --tpu=local" in train
    assert train.endswith("--config.train.epochs=3")
    assert any(
        c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "/nails" in c for c in commands
    )


def test_tpu_vm_rejects_an_unknown_step():
    result = _run_script("tpu_vm.sh", "--dry-run", "launch")
    assert result.returncode == 2 and "unknown step" in result.stderr


def _gcloud(commands, verb):
    return [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", verb]]


POD = {
    "TPU_NAME": "my-pod",
    "ZONE": "us-central2-b",
    "ACCELERATOR_TYPE": "v4-32",
    "DATA_URL": "gs://bucket/nails",
    "WORKDIR_URL": "gs://bucket/runs/effb4",
}


def test_tpu_vm_dry_run_on_a_pod_slice_trains_from_worker_0_on_cloud_storage():
    result = _run_script("tpu_vm.sh", "--dry-run", "all", "--config.train.epochs=3", **POD)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    (create,) = _gcloud(commands, "create")
    # The -pod runtime runs the TPU server on every host that the client drives.
    assert {"my-pod", "--accelerator-type=v4-32", "--version=tpu-vm-tf-2.20.0-pod-pjrt"} <= set(
        create
    )
    # Only the code is copied, to every host; the data stays in Cloud Storage.
    (scp,) = _gcloud(commands, "scp")
    assert scp[5].endswith("nailseg-src.tar.gz") and "--worker=all" in scp
    setup, train = _gcloud(commands, "ssh")
    assert "--worker=all" in setup and "tensorflow-tpu==2.20.0" in setup[-1]
    # TensorFlow drives a pod slice from one client: the trainer runs once, on worker 0.
    assert "--worker=0" in train and "--worker=all" not in train
    words = shlex.split(train[-1].removeprefix("--command="))
    start = words.index("python3")
    assert words[start - 2 : start] == ["TPU_NAME=my-pod", "TPU_LOAD_LIBRARY=0"]
    assert words[start : start + 5] == [
        "python3",
        "-m",
        "trainer.train",
        "--strategy=tpu",
        "--tpu=my-pod",
    ]
    assert {"--data_root=gs://bucket/nails", "--workdir=gs://bucket/runs/effb4"} <= set(words)
    assert words[-1] == "--config.train.epochs=3"


def test_tpu_vm_fetch_from_a_pod_slice_copies_the_cloud_storage_workdir():
    result = _run_script("tpu_vm.sh", "--dry-run", "fetch", RESULTS_DIR="runs/pod", **POD)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert commands[-1] == [
        "gcloud",
        "storage",
        "cp",
        "--recursive",
        "gs://bucket/runs/effb4",
        "runs/pod",
    ]


@pytest.mark.parametrize("accelerator", ["v4-16", "v5p-16", "v5litepod-16", "v6e-32", "v3-32"])
def test_tpu_vm_refuses_a_local_data_dir_for_a_pod_slice(accelerator):
    env = dict(POD, ACCELERATOR_TYPE=accelerator, DATA_DIR="/srv/nails")
    result = _run_script("tpu_vm.sh", "--dry-run", "all", **env)
    assert result.returncode == 2 and result.stdout == ""  # refused before any command
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: DATA_DIR=/srv/nails: ") and "DATA_URL=gs://" in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DATA_URL", ""), ("DATA_URL", "/srv/nails"), ("WORKDIR_URL", ""), ("WORKDIR_URL", "runs")],
)
def test_tpu_vm_pod_slice_needs_cloud_storage_urls(variable, value):
    result = _run_script("tpu_vm.sh", "--dry-run", "train", **dict(POD, **{variable: value}))
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {variable}=") and f"{variable}=gs://" in line


@pytest.mark.parametrize("accelerator", ["v2-8", "v4-8", "v5p-8", "v5litepod-8", "v6e-4"])
def test_tpu_vm_single_host_slices_keep_the_local_copy(accelerator):
    result = _run_script(
        "tpu_vm.sh", "--dry-run", "all", ACCELERATOR_TYPE=accelerator, DATA_DIR="/nails"
    )
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert "--version=tpu-ubuntu2204-base" in _gcloud(commands, "create")[0]
    assert any("/nails" in c for c in _gcloud(commands, "scp"))
    train = _gcloud(commands, "ssh")[-1]
    assert "--worker=all" in train and "--tpu=local" in train[-1]


def test_tpu_vm_rejects_an_accelerator_type_without_a_size():
    result = _run_script("tpu_vm.sh", "--dry-run", "delete", ACCELERATOR_TYPE="v4")
    assert result.returncode == 2 and "ACCELERATOR_TYPE=v4" in result.stderr
