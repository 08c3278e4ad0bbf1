"""Training end to end: in-process through `train_and_evaluate`, and through its command line."""

import json
import math
import os

import pytest

from tests.files import metrics_records


def test_train_then_resume_in_process_reaches_the_step_and_returns_results(trained_run):
    workdir, first, resumed = trained_run
    assert (first["step"], first["total_steps"], first["stopped_by"]) == (4, 4, None)
    assert (resumed["step"], resumed["stopped_by"]) == (6, None)
    assert resumed["best"]["step"] in (2, 4, 6) and 0.0 <= resumed["best"]["iou"] <= 1.0
    assert resumed["export_dir"] == os.path.join(workdir, "export")


def test_training_writes_the_work_directory_contract(trained_workdir):
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoints",
        "export/saved_model.pb",
        "curves.png",
        "tb",
    ):
        assert os.path.exists(os.path.join(trained_workdir, name)), name


def test_metrics_records_have_the_contract_fields(trained_workdir):
    records = metrics_records(trained_workdir)
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    assert {"step", "split", "loss", "iou", "fscore", "images_per_sec"} <= set(train[0])
    # The rate of the record's last step: the demo's cosine, 1e-3 over 4 steps, at step 1.
    assert train[0]["learning_rate"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert {"step", "split", "loss", "iou", "fscore"} <= set(valid[0])
    assert 0.0 <= valid[-1]["iou"] <= 1.0


def test_resume_writes_no_duplicate_records_and_the_plan(trained_workdir):
    steps = [(r["step"], r["split"]) for r in metrics_records(trained_workdir)]
    assert steps == [(s, split) for s in (2, 4, 6) for split in ("train", "valid")]
    config = json.load(open(os.path.join(trained_workdir, "config.json")))
    assert config["run"]["total_steps"] == 6 and config["model"]["backbone"] == "resnet18"
    assert config["run"]["strategy"] == "one_device"
    assert config["run"]["precision"] == "float32"


def test_exported_saved_model_predicts_masks(trained_workdir):
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(trained_workdir, "export"))
    images = np.random.randint(0, 256, [2, 48, 80, 3], dtype=np.uint8)
    outputs = loaded.signatures["serve_images"](images=tf.constant(images))
    assert outputs["probabilities"].shape == (2, 48, 80, 1)
    encoded = tf.constant([tf.io.encode_png(images[0]).numpy()])
    outputs = loaded.signatures["serving_default"](image_bytes=encoded)
    assert outputs["probabilities"].shape == (1, 48, 80, 1)


def test_validation_pictures_are_written_at_each_evaluation(trained_workdir):
    samples = sorted(os.listdir(os.path.join(trained_workdir, "samples")))
    assert samples == ["step_2.png", "step_4.png", "step_6.png"]


def test_exit_status_tells_finished_from_interrupted_and_resumable():
    from trainer import train

    assert train.exit_status({"stopped_by": None}) == 0
    assert train.exit_status({"stopped_by": "SIGTERM"}) == 143
    assert train.exit_status({"stopped_by": "SIGINT"}) == 130
    assert train.exit_status({"stopped_by": "another worker's stop request"}) == 143


@pytest.mark.slow
def test_command_line_trains_on_two_cpu_devices_logs_offline_and_says_where_results_are(
    run_module, tiny_args, synthetic_root, tmp_path
):
    workdir = str(tmp_path / "mirrored")
    process = run_module(
        "train",
        *tiny_args,
        "--config.train.steps=2",
        "--config.log.wandb=True",
        "--strategy=mirrored",
        "--num_cpu_devices=2",
        f"--data_root={synthetic_root}",
        f"--workdir={workdir}",
    )
    assert process.returncode == 0, process.stderr[-4000:]
    assert "Training done: best valid IoU" in process.stdout
    assert os.path.abspath(workdir) in process.stdout
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["run"]["num_replicas"] == 2 and config["run"]["per_replica_batch_size"] == 2
    assert config["run"]["strategy"] == "mirrored"
    assert [r["step"] for r in metrics_records(workdir)] == [2, 2]
    assert "wandb: offline run" in process.stderr
    runs = os.listdir(os.path.join(workdir, "wandb"))
    assert any(name.startswith("offline-run-") for name in runs), runs


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
def test_bad_input_gets_one_line_and_no_traceback(
    run_module, assert_one_error_line, tiny_args, synthetic_root, tmp_path, extra, message
):
    args = [*tiny_args, f"--data_root={synthetic_root}", f"--workdir={tmp_path / 'w'}", *extra]
    assert_one_error_line(run_module("train", *args), message)


@pytest.mark.slow
def test_an_average_of_the_weights_is_what_is_evaluated_and_kept_not_what_trains_on(
    tiny_config, synthetic_root, tmp_path
):
    from trainer import train

    import numpy as np
    import tensorflow as tf

    from tests.files import one_device

    workdir = tmp_path / "ema"
    config = tiny_config(train__steps=4, train__eval_every=4, train__checkpoint_every=4)
    config.train.ema_decay = 0.9
    results = train.train_and_evaluate(
        config, workdir=str(workdir), data_root=str(synthetic_root), strategy=one_device()
    )
    assert results["step"] == 4 and results["best"]["step"] == 4
    best = tf.train.load_checkpoint(str(workdir / "best" / results["best"]["weights"]))
    trained = tf.train.load_checkpoint(str(workdir / "checkpoints"))
    kernels = [
        name
        for name in best.get_variable_to_shape_map()
        if name.endswith("/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    ]
    assert kernels
    # The best weights (saved at the step-4 evaluation) are the average; the
    # checkpoint of the same step holds the trained values training goes on from.
    for name in kernels:
        assert not np.allclose(best.get_tensor(name), trained.get_tensor(f"model/{name}")), name
