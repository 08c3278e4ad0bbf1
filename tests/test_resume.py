"""Nothing lost: kill -9, SIGTERM, damaged checkpoints, a foreign workdir, divergence."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_train import REPO, TINY, read_records, run_trainer


def _start_trainer(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.train", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, process, timeout_s=300):
    """Waits until `path` exists, or until any file matching it does if it holds a `*`."""
    deadline = time.time() + timeout_s
    while not glob.glob(path):
        if process.poll() is not None:
            raise AssertionError(f"trainer ended early:\n{process.stderr.read()[-3000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.2)


def _final_weights(workdir):
    import trainer  # noqa: F401

    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.slow
def test_kill_9_after_the_second_checkpoint_resumes_to_the_same_weights(synthetic_root, tmp_path):
    args = [*TINY, f"--data_root={synthetic_root}", "--config.train.steps=8"]
    args += ["--config.train.checkpoint_every=2", "--config.train.eval_every=4"]
    reference = str(tmp_path / "reference")
    run_trainer(*args, f"--workdir={reference}")

    killed = str(tmp_path / "killed")
    process = _start_trainer(*args, f"--workdir={killed}")
    _wait_for(os.path.join(killed, "checkpoints", "ckpt-4.index"), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = run_trainer(*args, f"--workdir={killed}")

    assert "Resumed from checkpoint at step" in resumed.stderr
    assert [(r["step"], r["split"]) for r in read_records(killed)] == [
        (s, split) for s in (2, 4, 6, 8) for split in ["train"] + ["valid"] * (s % 4 == 0)
    ]
    # Same seed, same data order and augmentation from the restored step, and
    # deterministic CPU kernels: the weights match bit for bit.
    expected, actual = _final_weights(reference), _final_weights(killed)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(expected[name], actual[name], err_msg=name)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_next_start_resumes(synthetic_root, tmp_path):
    workdir = str(tmp_path / "w")
    args = [*TINY, f"--data_root={synthetic_root}", f"--workdir={workdir}"]
    args += ["--config.train.steps=1000", "--config.train.steps_per_execution=1"]
    process = _start_trainer(*args)
    _wait_for(os.path.join(workdir, "checkpoints", "ckpt-*.index"), process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)

    assert process.returncode == 0, stderr[-3000:]
    assert "Stopped by SIGTERM at step" in stdout
    stopped_at = int(stdout.split("Stopped by SIGTERM at step ")[1].split(";")[0])
    assert os.path.exists(os.path.join(workdir, "checkpoints", f"ckpt-{stopped_at}.index"))
    resumed = run_trainer(*args[:-1], "--config.train.steps=" + str(stopped_at + 2))
    assert f"Resumed from checkpoint at step {stopped_at}" in resumed.stderr


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finished") / "w")
    args = [*TINY, f"--data_root={synthetic_root}", f"--workdir={workdir}"]
    run_trainer(*args, "--config.train.steps=4", "--config.train.checkpoint_every=2")
    return workdir, args


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path):
    source, args = finished_run
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    for name in os.listdir(checkpoints):  # a crash mid-save or a damaged disk
        if name.startswith("ckpt-4.data"):
            with open(os.path.join(checkpoints, name), "r+b") as f:
                f.truncate(100)
    with open(os.path.join(checkpoints, "ckpt-6.data-00000-of-00001"), "wb") as f:
        f.write(b"half a checkpoint, never indexed")  # killed before its index was written

    resumed = run_trainer(*args[:-1], f"--workdir={workdir}", "--config.train.steps=6")
    assert "Resumed from checkpoint at step 2" in resumed.stderr
    assert "Cannot restore" in resumed.stderr


def test_workdir_of_another_model_is_refused_unless_overwrite(finished_run, tmp_path):
    source, args = finished_run
    workdir = str(tmp_path / "w")
    shutil.copytree(source, workdir)
    other = [*args[:-1], f"--workdir={workdir}", "--config.model.backbone=mobilenetv2"]

    refused = run_trainer(*other, "--config.train.steps=2", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds a run with model.backbone='resnet18'" in refused.stderr
    assert len(read_records(workdir)) == len(read_records(source))  # nothing touched

    fresh = run_trainer(*other, "--config.train.steps=2", "--overwrite")
    assert "Resumed from checkpoint" not in fresh.stderr
    assert [r["step"] for r in read_records(workdir)] == [2, 2]


def test_diverging_float32_run_stops_keeping_the_good_checkpoint(synthetic_root, tmp_path):
    workdir = str(tmp_path / "w")
    process = run_trainer(
        *TINY,
        f"--data_root={synthetic_root}",
        f"--workdir={workdir}",
        "--config.train.steps=40",
        "--config.train.learning_rate=1e30",
        "--config.train.max_bad_steps=4",
        check=False,
    )
    assert process.returncode == 2, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    error = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "training diverged" in error[0], process.stderr[-3000:]
