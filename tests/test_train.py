"""The training entry point end to end, through its command line."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config=configs/demo_cpu.py",
    "--config.data.image_size=64",
    "--config.data.batch_size=4",
    "--config.model.decoder_filters=(32,16,16,8,8)",
    "--config.train.warmup_steps=0",
    "--config.train.eval_every=2",
    "--config.train.log_every=2",
    "--config.train.steps_per_execution=2",
]


def run_trainer(*args, check=True):
    """Runs `python -m trainer.train` and returns the finished process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    process = subprocess.run(
        [sys.executable, "-m", "trainer.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and process.returncode != 0:
        raise AssertionError(f"trainer failed ({process.returncode}):\n{process.stderr[-4000:]}")
    return process


def read_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """A workdir trained 4 steps on one device, then resumed to 6."""
    workdir = str(tmp_path_factory.mktemp("run") / "workdir")
    common = [*TINY, f"--data_root={synthetic_root}", f"--workdir={workdir}"]
    first = run_trainer(*common, "--config.train.steps=4", "--config.log.wandb=True")
    second = run_trainer(*common, "--config.train.steps=6")
    return workdir, first, second


def test_training_writes_the_work_directory_contract(trained):
    workdir, first, _ = trained
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoints",
        "export/saved_model.pb",
        "curves.png",
        "tb",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert "Training done: best valid IoU" in first.stdout
    assert os.path.abspath(workdir) in first.stdout


def test_wandb_logs_offline_when_not_logged_in(trained):
    workdir, first, _ = trained
    assert "wandb: offline run" in first.stderr
    runs = os.listdir(os.path.join(workdir, "wandb"))
    assert any(name.startswith("offline-run-") for name in runs), runs


def test_metrics_records_have_the_contract_fields(trained):
    records = read_records(trained[0])
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    assert {"step", "split", "loss", "iou", "fscore", "images_per_sec"} <= set(train[0])
    assert {"step", "split", "loss", "iou", "fscore"} <= set(valid[0])
    assert 0.0 <= valid[-1]["iou"] <= 1.0


def test_restart_resumes_from_the_checkpoint_without_duplicate_records(trained):
    workdir, _, second = trained
    assert "Resumed from checkpoint at step 4" in second.stderr
    steps = [(r["step"], r["split"]) for r in read_records(workdir)]
    assert steps == [(s, split) for s in (2, 4, 6) for split in ("train", "valid")]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["run"]["total_steps"] == 6 and config["model"]["backbone"] == "resnet18"


def test_exported_saved_model_predicts_masks(trained):
    import trainer  # noqa: F401

    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(trained[0], "export"))
    images = np.random.randint(0, 256, [2, 48, 80, 3], dtype=np.uint8)
    outputs = loaded.signatures["serve_images"](images=tf.constant(images))
    assert outputs["probabilities"].shape == (2, 48, 80, 1)
    encoded = tf.constant([tf.io.encode_png(images[0]).numpy()])
    outputs = loaded.signatures["serving_default"](image_bytes=encoded)
    assert outputs["probabilities"].shape == (1, 48, 80, 1)


def test_validation_pictures_are_written_at_each_evaluation(trained):
    samples = sorted(os.listdir(os.path.join(trained[0], "samples")))
    assert samples == ["step_2.png", "step_4.png", "step_6.png"]


def test_mirrored_on_two_cpu_devices_trains(synthetic_root, tmp_path):
    workdir = str(tmp_path / "mirrored")
    run_trainer(
        *TINY,
        "--config.train.steps=2",
        "--strategy=mirrored",
        "--num_cpu_devices=2",
        f"--data_root={synthetic_root}",
        f"--workdir={workdir}",
    )
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["run"]["num_replicas"] == 2 and config["run"]["per_replica_batch_size"] == 2
    assert [r["step"] for r in read_records(workdir)] == [2, 2]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data_root=/nonexistent/data"], "/nonexistent/data"),
        (["--strategy=mirrored"], "--strategy=mirrored found one device"),
        (
            ["--strategy=mirrored", "--num_cpu_devices=2", "--config.data.batch_size=3"],
            "batch_size=3 does not divide over 2 replicas",
        ),
    ],
)
def test_bad_input_gets_one_line_and_no_traceback(synthetic_root, tmp_path, extra, message):
    args = [*TINY, f"--data_root={synthetic_root}", f"--workdir={tmp_path / 'w'}", *extra]
    process = run_trainer(*args, check=False)
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    error_lines = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], process.stderr[-2000:]
