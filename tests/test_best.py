"""trainer.best: the best validation weights and their record, replaced as a pair."""

import errno
import os

from trainer import best
from trainer.errors import UserError

import numpy as np
import pytest
import tensorflow as tf


def _model(seed):
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential([tf.keras.Input([3]), tf.keras.layers.Dense(2)])


def test_the_best_weights_replace_the_previous_best(tmp_path):
    workdir = str(tmp_path)
    assert best.read_best(workdir) is None
    assert best.load_best_weights(workdir, _model(0)) is None

    best.save_best_weights(workdir, _model(1), step=2, results={"iou": 0.5, "num_examples": 9})
    second = _model(2)
    best.save_best_weights(workdir, second, step=4, results={"iou": np.float64(0.75)})
    record = best.read_best(workdir)
    assert record == {"step": 4, "weights": "weights-4", "iou": 0.75}
    names = os.listdir(tmp_path / "best")
    assert "best.json" in names and not any(n.startswith("weights-2.") for n in names)

    loaded = _model(3)
    assert best.load_best_weights(workdir, loaded) == record
    for expected, restored in zip(second.weights, loaded.weights):
        np.testing.assert_array_equal(expected.numpy(), restored.numpy())


def test_weights_that_cannot_be_written_keep_the_previous_best(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    best.save_best_weights(workdir, _model(1), step=2, results={"iou": 0.5})
    model = _model(2)

    def full_disk(prefix):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_weights", full_disk)
    with pytest.raises(UserError) as error:
        best.save_best_weights(workdir, model, step=4, results={"iou": 0.75})
    assert str(error.value).startswith(
        f"cannot write {tmp_path / 'best'}: the disk is full (needed about 32 bytes for the best"
    )
    assert best.read_best(workdir)["step"] == 2
