"""trainer.evaluate: exact figures, the same on 1 and 2 devices, from a workdir or an export.

The work directory is conftest's `trained_workdir`, trained once per session.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def workdir(trained_workdir):
    return trained_workdir


@pytest.fixture(scope="module")
def mirrored_run(workdir, synthetic_root, tmp_path_factory, run_module):
    """The CLI on 2 logical CPU devices, 2 images per replica: 9 valid images pad to 12."""
    output_dir = tmp_path_factory.mktemp("eval_mirrored")
    process = run_module(
        "evaluate",
        f"--model={workdir}",
        f"--data_root={synthetic_root}",
        f"--output_dir={output_dir}",
        "--strategy=mirrored",
        "--num_cpu_devices=2",
        "--batch_size=4",
    )
    assert process.returncode == 0, process.stderr[-4000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    return process, summary, pd.read_csv(output_dir / "per_image.csv")


@pytest.fixture(scope="module")
def valid_rows(synthetic_root):
    from trainer.data import manifest

    return manifest.read_manifests(synthetic_root)[1]


def _count_in_process(model_path, rows, global_batch_size, resolution="photo"):
    from trainer import evaluate, inference

    import tensorflow as tf

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        trained = inference.load_trained_model(model_path)
    return evaluate.count_confusions(
        trained, rows, strategy, global_batch_size=global_batch_size, resolution=resolution
    )


@pytest.mark.slow  # the evaluate command on 2 devices: about a minute of setup (mirrored_run)
def test_cli_writes_the_summary_and_per_image_table(mirrored_run, valid_rows):
    process, summary, table = mirrored_run
    num_images = len(valid_rows)
    assert num_images % 4, "the test needs a valid set that is not a multiple of the batch"
    assert summary["num_images"] == num_images == len(table)
    assert summary["resolution"] == "photo"
    assert set(summary["iou_at_threshold"]) == {f"0.{k}" for k in range(1, 10)}
    assert summary["iou_at_threshold"]["0.5"] == summary["iou"]
    assert summary["iou_at_threshold"][f"{summary['best_threshold']:.1f}"] == max(
        summary["iou_at_threshold"].values()
    )
    assert summary["iou"] == pytest.approx(
        summary["tp"] / (summary["tp"] + summary["fp"] + summary["fn"])
    )
    assert summary["mean_image_iou"] == pytest.approx(table["iou"].mean(), abs=1e-6)
    assert sum(g["num_images"] for g in summary["groups"].values()) == num_images
    assert set(summary["groups"]) == set(valid_rows["group"])
    for name, group in summary["groups"].items():
        assert set(group) >= {"iou", "fscore", "num_images"}, name
    assert list(table.columns) == ["path", "group", "iou", "fscore", "predicted_area", "true_area"]
    assert table["iou"].is_monotonic_increasing  # worst first
    assert sorted(table["path"]) == sorted(valid_rows["images"])
    assert "group 1: IoU" in process.stderr and "IoU" in process.stdout


@pytest.mark.slow  # the evaluate command on 2 devices: about a minute of setup (mirrored_run)
def test_every_pixel_is_counted_once(mirrored_run, valid_rows):
    """Padding (12 slots for 9 images) adds nothing: true areas are the masks' own counts."""
    from trainer.data import decode

    _, summary, table = mirrored_run
    true_area = {
        image: int(decode.decode_mask(mask).numpy().sum())
        for image, mask in zip(valid_rows["images"], valid_rows["masks"])
    }
    assert dict(zip(table["path"], table["true_area"])) == true_area
    assert summary["tp"] + summary["fn"] == sum(true_area.values())


@pytest.mark.slow  # ~15 s: evaluates the trained run on photos of 3 other sizes
def test_photos_of_other_sizes_are_counted_at_their_own_size(workdir, valid_rows, tmp_path):
    """Each photo enlarged to its own size (mixed proportions): its mask's pixels, all of them."""
    from trainer import evaluate

    import cv2

    rows = valid_rows.copy()
    sizes = [(96, 80), (64, 150), (121, 67)]  # (width, height), none the model's 64 x 64
    true_area, all_pixels = [], 0
    for k, (image, mask) in enumerate(zip(valid_rows["images"], valid_rows["masks"])):
        size = sizes[k % len(sizes)]
        big_image = cv2.resize(cv2.imread(image), size, interpolation=cv2.INTER_LINEAR)
        big_mask = cv2.resize(
            cv2.imread(mask, cv2.IMREAD_GRAYSCALE), size, interpolation=cv2.INTER_NEAREST
        )
        rows.loc[k, "images"] = str(tmp_path / f"{k}.png")
        rows.loc[k, "masks"] = str(tmp_path / f"{k}_mask.png")
        cv2.imwrite(rows.loc[k, "images"], big_image)
        cv2.imwrite(rows.loc[k, "masks"], big_mask)
        true_area.append(int((big_mask > 127).sum()))
        all_pixels += size[0] * size[1]

    counts = _count_in_process(workdir, rows, global_batch_size=4)

    at_half = counts[:, evaluate.THRESHOLDS.index(0.5), 0]  # the one channel of a binary model
    assert (at_half[:, 0] + at_half[:, 2]).tolist() == true_area  # tp + fn
    assert (at_half.sum(axis=1) <= all_pixels).all()
    at_model_size = _count_in_process(workdir, valid_rows, 4, resolution="model")
    photo_iou = evaluate.summarize(rows, counts)["iou"]
    assert photo_iou == pytest.approx(evaluate.summarize(valid_rows, at_model_size)["iou"], abs=0.1)


def test_model_resolution_counts_the_masks_as_validation_resizes_them(workdir, valid_rows):
    from trainer import evaluate
    from trainer.data import decode

    counts = _count_in_process(workdir, valid_rows, global_batch_size=4, resolution="model")
    true_area = []
    for image, mask in zip(valid_rows["images"], valid_rows["masks"]):
        _, resized = decode.load_pair(image, mask, 64)
        true_area.append(int(resized.numpy().sum()))

    at_half = counts[:, evaluate.THRESHOLDS.index(0.5), 0]
    assert (at_half[:, 0] + at_half[:, 2]).tolist() == true_area


@pytest.mark.slow  # the evaluate command on 2 devices: about a minute of setup (mirrored_run)
def test_one_device_matches_two_devices_and_the_training_evaluation(
    mirrored_run, workdir, valid_rows
):
    from trainer import best, evaluate

    _, summary, table = mirrored_run
    # One device, 2 per batch (9 images: the last batch padded), as each replica above.
    counts = _count_in_process(workdir, valid_rows, global_batch_size=2)
    one_device = evaluate.summarize(valid_rows, counts)
    assert one_device["iou"] == pytest.approx(summary["iou"], abs=1e-5)
    assert one_device["fscore"] == pytest.approx(summary["fscore"], abs=1e-5)
    for name, group in one_device["groups"].items():
        assert group["iou"] == pytest.approx(summary["groups"][name]["iou"], abs=1e-5)
    assert one_device["tp"] == summary["tp"] and one_device["fp"] == summary["fp"]
    in_process = evaluate.per_image_table(valid_rows, counts)
    assert in_process["path"].tolist() == table["path"].tolist()
    # At the model's size: the same weights and images as the run's own last evaluation.
    at_model_size = _count_in_process(workdir, valid_rows, 2, resolution="model")
    model_iou = evaluate.summarize(valid_rows, at_model_size)["iou"]
    assert model_iou == pytest.approx(best.read_best(workdir)["iou"], abs=1e-5)


@pytest.mark.slow  # exports the trained run again (~15 s)
def test_an_export_evaluates_like_its_workdir(workdir, valid_rows):
    from_workdir = _count_in_process(workdir, valid_rows, global_batch_size=8)
    from_export = _count_in_process(os.path.join(workdir, "export"), valid_rows, 3)
    # The export runs the same network through its serve_images signature.
    differing_pixels = np.abs(from_workdir - from_export).sum()
    assert differing_pixels <= 0.001 * from_workdir[:, 2, 0].sum(), differing_pixels


def test_summarize_hand_computed_counts():
    from trainer import evaluate

    rows = pd.DataFrame({"images": ["a.png", "b.png"], "group": ["1", "2"]})
    counts = np.zeros([2, len(evaluate.THRESHOLDS), 1, 3], np.int64)
    counts[0, :, 0] = [6, 2, 2]  # every threshold: IoU 6 / 10
    counts[1, :, 0] = [0, 0, 0]  # nothing to find, nothing found: IoU 1
    counts[1, evaluate.THRESHOLDS.index(0.4), 0] = [0, 5, 0]  # at 0.4 only, 5 false positives
    summary = evaluate.summarize(rows, counts)
    assert summary["iou"] == pytest.approx(0.6)  # 6 / (6 + 2 + 2)
    assert summary["fscore"] == pytest.approx(0.75)  # 12 / (12 + 2 + 2)
    assert summary["mean_image_iou"] == pytest.approx(0.8)  # (0.6 + 1) / 2
    assert summary["iou_at_threshold"]["0.4"] == pytest.approx(0.4)  # 6 / 15
    assert summary["best_threshold"] == 0.1  # ties: the first
    assert summary["groups"]["2"] == {
        "iou": 1.0,
        "fscore": 1.0,
        "mean_image_iou": 1.0,
        "num_images": 1,
    }
    table = evaluate.per_image_table(rows, counts)
    assert table["path"].tolist() == ["a.png", "b.png"]
    assert table[["predicted_area", "true_area"]].values.tolist() == [[8, 8], [0, 0]]


def test_a_path_that_is_no_model_gets_one_error_line(
    tmp_path, synthetic_root, run_module, assert_one_error_line
):
    process = run_module("evaluate", f"--model={tmp_path}", f"--data_root={synthetic_root}")
    assert_one_error_line(process, "is neither a work directory")
