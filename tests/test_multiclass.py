"""Several classes end to end: label masks through decode, cache, pipeline, training, evaluate."""

import json
import os

import trainer  # noqa: F401
from trainer import evaluate, inference, train
from trainer.data import cache, decode, pipeline, synthetic

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from configs import demo_multiclass_cpu
from tests.conftest import TINY_OVERRIDES
from tests.files import metrics_records, one_device

NAMES = ("background", "nail", "tip")


def _labels_png(path, labels, palette=False):
    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)
    image.save(path)
    return str(path)


def test_label_masks_keep_their_values_and_resize_without_in_between_labels(tmp_path):
    labels = np.zeros((30, 50), np.uint8)
    labels[5:20, 10:30] = 1
    labels[12:25, 25:45] = 2
    labels[0:3, :] = 255
    for palette in (False, True):
        path = _labels_png(tmp_path / f"labels_{palette}.png", labels, palette)
        decoded = decode.decode_mask(tf.constant(path), 3).numpy()[..., 0]
        np.testing.assert_array_equal(decoded, labels)  # palette PNGs give their indices
        resized = decode.resize_mask(decode.decode_mask(tf.constant(path), 3), 64, 3).numpy()
        assert set(np.unique(resized)) == {0, 1, 2, 255}
    # The binary reading of the same file binarises at 127: only the 255 rows survive.
    binary = decode.decode_mask(tf.constant(path)).numpy()[..., 0]
    assert set(np.unique(binary)) == {0, 1} and binary[3:].sum() == 0


@pytest.fixture(scope="module")
def three_class_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic3")
    synthetic.write_dataset(root, num_images=24, image_size=64, seed=0, num_classes=3)
    return root


def _frame(root):
    images = sorted((root / "Images").rglob("*.png"))
    return pd.DataFrame(
        {
            "images": [str(p) for p in images],
            "masks": [str(root / "Masks" / p.relative_to(root / "Images")) for p in images],
            "group": [p.parent.name for p in images],
        }
    )


def _data_config(**overrides):
    config = demo_multiclass_cpu.get_config().data
    config.image_size = 64
    config.batch_size = 8
    for key, value in overrides.items():
        config[key] = value
    return config


def test_augmented_training_batches_hold_only_labels(three_class_root):
    dataset = pipeline.make_dataset(
        _frame(three_class_root), _data_config(), training=True, seed=0, num_classes=3
    )
    values = set()
    for _, masks in dataset.take(3):
        values |= set(np.unique(masks.numpy()).tolist())
    # Rotation and scaling use nearest neighbour for masks: no label between two others.
    assert values == {0.0, 1.0, 2.0}


def test_the_cache_keeps_label_masks_apart_from_binary_ones(three_class_root, tmp_path):
    frame = _frame(three_class_root).iloc[:4]
    folder = str(tmp_path / "cache")
    as_labels = cache.ensure_cached(frame, 64, folder, num_parallel_calls=2, num_classes=3)
    as_binary = cache.ensure_cached(frame, 64, folder, num_parallel_calls=2)
    assert set(as_labels[cache.COLUMN]).isdisjoint(as_binary[cache.COLUMN])
    _, labels = cache.read_pair(tf.constant(as_labels[cache.COLUMN].iloc[0]), 64)
    _, expected = decode.load_pair(
        frame["images"].iloc[0], frame["masks"].iloc[0], 64, "stretch", 3
    )
    np.testing.assert_array_equal(labels.numpy(), expected.numpy())


@pytest.fixture(scope="module")
def trained_three_classes(three_class_root, tmp_path_factory):
    config = demo_multiclass_cpu.get_config()
    for key, value in TINY_OVERRIDES.items():
        group, field = key.split(".")
        config[group][field] = value
    config.train.steps = 4
    config.train.class_weights = (0.5, 1.0, 2.0)
    config.log.num_samples = 2
    workdir = str(tmp_path_factory.mktemp("run3") / "workdir")
    results = train.train_and_evaluate(
        config, workdir=workdir, data_root=str(three_class_root), strategy=one_device()
    )
    return workdir, results


@pytest.mark.slow
def test_metrics_records_name_each_class_and_the_best_is_chosen_by_the_mean(
    trained_three_classes,
):
    workdir, results = trained_three_classes
    valid = [r for r in metrics_records(workdir) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4]
    for record in valid:
        for name in NAMES:
            assert 0.0 <= record[f"iou/{name}"] <= 1.0
        foreground = [record[f"iou/{name}"] for name in NAMES[1:]]
        # Both foreground classes are in every image: the mean is over both.
        assert record["iou"] == pytest.approx(np.mean(foreground))
    best = max(valid, key=lambda r: r["iou"])
    assert results["best"]["step"] == best["step"]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["num_classes"] == 3


@pytest.mark.slow
def test_evaluate_counts_each_class_at_photo_and_model_size(
    trained_three_classes, three_class_root
):
    workdir, _ = trained_three_classes
    rows = _frame(three_class_root).iloc[:6]
    trained = inference.load_trained_model(workdir)
    assert trained.task.names == NAMES
    counts = {
        resolution: evaluate.count_confusions(
            trained, rows, one_device(), global_batch_size=4, resolution=resolution
        )
        for resolution in evaluate.RESOLUTIONS
    }
    for resolution, found in counts.items():
        assert found.shape == (6, 1, 3, 3), resolution
        # Every labelled pixel is a tp or fn of its class: the true areas are the masks'.
        true_area = found[:, 0, :, 0] + found[:, 0, :, 2]
        masks = [decode.decode_mask(tf.constant(m), 3).numpy() for m in rows["masks"]]
        if resolution == "model":
            masks = [decode.resize_mask(m, 64, 3).numpy() for m in masks]
        expected = [[int((m == k).sum()) for k in range(3)] for m in masks]
        assert true_area.tolist() == expected, resolution
    summary = evaluate.summarize(rows, counts["photo"], trained.task)
    assert set(summary["per_class"]) == set(NAMES)
    assert summary["mean_iou"] == summary["iou"]
    assert "best_threshold" not in summary and len(summary["tp"]) == 3
    table = evaluate.per_image_table(rows, counts["photo"], trained.task)
    assert {f"iou/{name}" for name in NAMES} <= set(table.columns)


def test_summarize_hand_computed_class_counts():
    rows = pd.DataFrame({"images": ["a.png", "b.png"], "group": ["1", "1"]})
    counts = np.zeros([2, 1, 3, 3], np.int64)
    counts[0, 0] = [[90, 2, 2], [6, 2, 2], [0, 0, 0]]  # no tip in a: left out of its mean
    counts[1, 0] = [[80, 0, 4], [3, 1, 0], [2, 1, 1]]
    task = inference.classes.Task(num_classes=3, names=NAMES, ignore_label=255)
    summary = evaluate.summarize(rows, counts, task)
    nail, tip = 9 / (9 + 3 + 2), 2 / (2 + 1 + 1)
    assert summary["per_class"]["nail"]["iou"] == pytest.approx(nail)
    assert summary["per_class"]["tip"]["iou"] == pytest.approx(tip)
    assert summary["iou"] == pytest.approx((nail + tip) / 2)
    assert summary["mean_image_iou"] == pytest.approx((0.6 + (0.75 + 0.5) / 2) / 2)
    assert summary["tp"] == [170, 9, 2]
    table = evaluate.per_image_table(rows, counts, task)
    assert table["true_area"].tolist() == [8, 6]  # foreground classes only, worst IoU first
