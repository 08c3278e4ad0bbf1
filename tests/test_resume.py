"""Nothing lost: kill -9, SIGTERM, damaged checkpoints, a foreign workdir, divergence."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

from trainer import train
from trainer.errors import UserError

import numpy as np
import pytest
import tensorflow as tf

from tests.files import metrics_records, mount_tmpfs, one_device, resize_tmpfs, unmount

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_to_success(run_module, *args):
    process = run_module("train", *args)
    assert process.returncode == 0, process.stderr[-4000:]
    return process


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
def test_kill_9_after_the_second_checkpoint_resumes_to_the_same_weights(
    run_module, tiny_args, synthetic_root, tmp_path
):
    args = [*tiny_args, f"--data_root={synthetic_root}", "--config.train.steps=8"]
    args += ["--config.train.checkpoint_every=2", "--config.train.eval_every=4"]
    reference = str(tmp_path / "reference")
    _run_to_success(run_module, *args, f"--workdir={reference}")

    killed = str(tmp_path / "killed")
    process = _start_trainer(*args, f"--workdir={killed}")
    _wait_for(os.path.join(killed, "checkpoints", "ckpt-4.index"), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = _run_to_success(run_module, *args, f"--workdir={killed}")

    assert "Resumed from checkpoint at step" in resumed.stderr
    assert [(r["step"], r["split"]) for r in metrics_records(killed)] == [
        (s, split) for s in (2, 4, 6, 8) for split in ["train"] + ["valid"] * (s % 4 == 0)
    ]
    # Same seed, same data order and augmentation from the restored step, and
    # deterministic CPU kernels: the weights match bit for bit.
    expected, actual = _final_weights(reference), _final_weights(killed)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(expected[name], actual[name], err_msg=name)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_next_start_resumes(
    run_module, tiny_args, synthetic_root, tmp_path
):
    workdir = str(tmp_path / "w")
    args = [*tiny_args, f"--data_root={synthetic_root}", f"--workdir={workdir}"]
    args += ["--config.train.steps=1000", "--config.train.steps_per_execution=1"]
    process = _start_trainer(*args)
    _wait_for(os.path.join(workdir, "checkpoints", "ckpt-*.index"), process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)

    # 128 + 15: interrupted and resumable, so that an orchestrator restarts it.
    assert process.returncode == 143, stderr[-3000:]
    assert "Stopped by SIGTERM at step" in stdout
    stopped_at = int(stdout.split("Stopped by SIGTERM at step ")[1].split(";")[0])
    assert os.path.exists(os.path.join(workdir, "checkpoints", f"ckpt-{stopped_at}.index"))
    resumed = _run_to_success(run_module, *args[:-1], "--config.train.steps=" + str(stopped_at + 2))
    assert f"Resumed from checkpoint at step {stopped_at}" in resumed.stderr


def _train(config, workdir, synthetic_root, **kwargs):
    return train.train_and_evaluate(
        config, workdir=workdir, data_root=str(synthetic_root), strategy=one_device(), **kwargs
    )


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    trained_workdir, tiny_config, synthetic_root, tmp_path, caplog
):
    workdir = str(tmp_path / "w")
    shutil.copytree(trained_workdir, workdir)  # checkpoints at steps 2, 4 and 6
    checkpoints = os.path.join(workdir, "checkpoints")
    for name in os.listdir(checkpoints):  # a crash mid-save or a damaged disk
        if name.startswith("ckpt-6.data"):
            with open(os.path.join(checkpoints, name), "r+b") as f:
                f.truncate(100)
    with open(os.path.join(checkpoints, "ckpt-8.data-00000-of-00001"), "wb") as f:
        f.write(b"half a checkpoint, never indexed")  # killed before its index was written

    caplog.set_level("INFO", logger="absl")
    resumed = _train(tiny_config(train__steps=8), workdir, synthetic_root)
    assert "Resumed from checkpoint at step 4" in caplog.text
    assert "Cannot restore" in caplog.text
    assert resumed["step"] == 8


def test_workdir_of_another_model_is_refused_before_the_data_is_read(
    trained_workdir, tiny_config, tmp_path
):
    workdir = str(tmp_path / "w")
    shutil.copytree(trained_workdir, workdir)
    other = tiny_config(train__steps=2, model__backbone="mobilenetv2")

    # A missing data folder: the work directory is checked before any data is read.
    with pytest.raises(UserError, match="holds a run with model.backbone='resnet18'"):
        _train(other, workdir, tmp_path / "no_data_here")
    assert len(metrics_records(workdir)) == len(metrics_records(trained_workdir))  # nothing touched


@pytest.mark.slow
def test_overwrite_starts_another_model_afresh(
    trained_workdir, tiny_config, synthetic_root, tmp_path, caplog
):
    workdir = str(tmp_path / "w")
    shutil.copytree(trained_workdir, workdir)
    other = tiny_config(train__steps=2, model__backbone="mobilenetv2")
    caplog.set_level("INFO", logger="absl")
    _train(other, workdir, synthetic_root, overwrite=True)
    assert "Resumed from checkpoint" not in caplog.text
    assert [r["step"] for r in metrics_records(workdir)] == [2, 2]


@pytest.mark.slow
def test_diverging_float32_run_stops_keeping_the_good_checkpoint(
    tiny_config, synthetic_root, tmp_path
):
    config = tiny_config(train__steps=40, train__learning_rate=1e30, train__max_bad_steps=4)
    with pytest.raises(UserError, match="training diverged") as raised:
        _train(config, str(tmp_path / "w"), synthetic_root)
    assert "\n" not in str(raised.value)
    # Cleanup ran although the run ended in an error: the stop handler is gone.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_the_same_run_resumes_once_there_is_space(
    tiny_config, synthetic_root, tmp_path
):
    workdir = tmp_path / "tmpfs"
    workdir.mkdir()
    # A checkpoint of the tiny run (weights + RectifiedAdam's two slots) is ~140 MB, best
    # weights ~47 MB: 260 MB hold the run's files at step 2 but not those of step 4.
    mount_tmpfs(workdir, size="260m")
    try:
        config = tiny_config(train__steps=6)
        with pytest.raises(
            UserError, match=f"^cannot write {workdir}.*: the disk is full"
        ) as error:
            _train(config, str(workdir), synthetic_root)
        assert "\n" not in str(error.value)
        saved = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
        stopped_at = int(saved.model_checkpoint_path.rsplit("-", 1)[1])
        assert stopped_at >= 2

        resize_tmpfs(workdir, size="2g")  # space freed: the same command goes on
        resumed = _train(config, str(workdir), synthetic_root)
        assert resumed["step"] == 6 and resumed["stopped_by"] is None
        steps = [r["step"] for r in metrics_records(workdir) if r["split"] == "valid"]
        assert steps == [2, 4, 6]  # nothing lost, nothing twice
    finally:
        unmount(workdir)
