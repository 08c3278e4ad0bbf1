"""A run's classes: read from a config or an old config.json, and what each task computes."""

import math

from trainer import classes, losses

import numpy as np
import pytest

from configs import demo_cpu, demo_multiclass_cpu


def test_a_config_json_without_class_fields_is_binary():
    # A work directory trained before several classes existed.
    old = {"data": {"image_size": 64}, "model": {"arch": "unet"}, "train": {}}
    task = classes.task(old)
    assert task == classes.BINARY
    assert task.is_binary and task.num_channels == 1 and task.ignore_label is None


def test_binary_config_ignores_the_ignore_label():
    # 255 is the foreground of 0/255 masks: a binary run must never ignore it.
    assert classes.task(demo_cpu.get_config()).ignore_label is None


def test_multiclass_config_gives_names_weights_and_ignore_label():
    config = demo_multiclass_cpu.get_config()
    config.train.class_weights = (1, 2, 4)
    task = classes.task(config)
    assert task.num_classes == task.num_channels == 3
    assert task.names == ("background", "nail", "tip")
    assert task.ignore_label == 255
    assert task.class_weights == (1.0, 2.0, 4.0)


def test_focal_weight_reaches_the_loss_and_defaults_to_the_seeds():
    config = demo_cpu.get_config()
    assert classes.task(config).focal_weight == 1.0
    assert classes.task({"model": {}, "train": {}}).focal_weight == 1.0  # an older config.json
    config.train.focal_weight = 0.0
    masks = np.ones((1, 4, 4, 1), np.float32)
    probabilities = np.full((1, 4, 4, 1), 0.5, np.float32)
    dice_only = classes.task(config).loss(masks, probabilities)
    np.testing.assert_allclose(dice_only, losses.dice_loss(masks, probabilities), rtol=1e-6)


def test_cross_entropy_weight_reaches_the_loss_and_defaults_to_none():
    config = demo_cpu.get_config()
    assert classes.task(config).cross_entropy_weight == 0.0
    assert classes.task({"model": {}, "train": {}}).cross_entropy_weight == 0.0
    config.train.focal_weight = 0.0
    config.train.cross_entropy_weight = 1.0
    masks = np.ones((1, 4, 4, 1), np.float32)
    probabilities = np.full((1, 4, 4, 1), 0.5, np.float32)
    dice_bce = classes.task(config).loss(masks, probabilities)
    expected = losses.dice_loss(masks, probabilities) + math.log(2.0)
    np.testing.assert_allclose(dice_bce, expected, rtol=1e-6)


def test_default_names_when_none_are_given():
    config = demo_multiclass_cpu.get_config()
    config.data.class_names = ()
    assert classes.task(config).names == ("background", "class_1", "class_2")


def test_per_class_record_is_flat_and_empty_for_binary():
    task = classes.task(demo_multiclass_cpu.get_config())
    scores = task.scores([10, 4, 0], [1, 1, 0], [1, 1, 0])
    record = task.per_class_record(scores)
    assert record["iou/nail"] == pytest.approx(4 / 6)
    assert record["fscore/nail"] == pytest.approx(8 / 10)
    assert set(record) == {f"{m}/{n}" for m in ("iou", "fscore") for n in task.names}
    # The tip is absent from masks and predictions: left out of the mean.
    assert scores["iou"] == pytest.approx(4 / 6)
    assert classes.BINARY.per_class_record(classes.BINARY.scores([4], [1], [1])) == {}


def test_task_confusion_counts_per_class_and_leaves_ignored_pixels_out():
    task = classes.task(demo_multiclass_cpu.get_config())
    labels = np.array([[0, 1, 2, 255]], np.float32).reshape(1, 1, 4, 1)
    predicted = np.eye(3, dtype=np.float32)[[0, 1, 1, 2]].reshape(1, 1, 4, 3)
    tp, fp, fn = (c.numpy()[0].tolist() for c in task.confusion(labels, predicted))
    assert tp == [1, 1, 0]
    assert fp == [0, 1, 0]  # the ignored pixel's prediction (2) counts nowhere
    assert fn == [0, 0, 1]
