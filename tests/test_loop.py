"""The train step: applied steps move the weights, non-finite steps leave the model as it was."""

import functools

import trainer  # noqa: F401
from trainer import loop
from trainer import plan as plan_lib

import numpy as np
import pytest
import tensorflow as tf

from configs import demo_cpu

SIZE_PX = 64


@functools.cache
def _make(precision):
    """One trainee per precision, shared by the tests (they check changes, not absolute state)."""
    config = demo_cpu.get_config()
    config.train.precision = precision
    config.train.warmup_steps = 0
    config.model.decoder_filters = (32, 16, 16, 8, 8)
    config.data.image_size = SIZE_PX
    config.data.batch_size = 2
    config.train.steps = 10
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    trainee = loop.build_trainee(config, strategy, plan_lib.run_plan(config, 20, 1))
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # the policy is restored
    return trainee.model, trainee.optimizer, trainee.step, trainee.train_fn, strategy


def _batches(strategy, images):
    masks = np.zeros((2, SIZE_PX, SIZE_PX, 1), np.float32)
    masks[:, 20:40, 20:40] = 1
    dataset = tf.data.Dataset.from_tensors((images, masks)).repeat()
    return iter(strategy.experimental_distribute_dataset(dataset))


def _snapshot(model):
    return [v.numpy().copy() for v in model.variables]


# float16 builds a second network (24 s on 2 cores): the slow suite runs it.
@pytest.mark.parametrize(
    "precision", ["float32", pytest.param("mixed_float16", marks=pytest.mark.slow)]
)
def test_non_finite_step_is_skipped_and_the_model_unchanged(precision):
    model, optimizer, step, train_fn, strategy = _make(precision)
    images = np.random.default_rng(0).random((2, SIZE_PX, SIZE_PX, 3), dtype=np.float32)
    poisoned = images.copy()
    poisoned[0, 5, 5, 0] = np.inf
    before = _snapshot(model)
    start = int(step.numpy())

    logs = train_fn(_batches(strategy, poisoned), tf.constant(2))

    assert int(step.numpy()) == start + 2  # skipped steps still count
    assert int(logs["finite_steps"]) == 0 and np.isnan(float(logs["loss"]))
    for was, now in zip(before, _snapshot(model)):  # weights and batch-norm statistics
        np.testing.assert_array_equal(was, now)

    logs = train_fn(_batches(strategy, images), tf.constant(1))
    assert int(logs["finite_steps"]) == 1 and np.isfinite(float(logs["loss"]))
    moved = [not np.array_equal(a, b) for a, b in zip(before, _snapshot(model))]
    assert sum(moved) > len(moved) // 2


@pytest.mark.slow  # shares the float16 network of the test above
def test_float16_skips_lower_the_loss_scale():
    model, optimizer, step, train_fn, strategy = _make("mixed_float16")
    scale = float(optimizer.loss_scale)
    poisoned = np.full((2, SIZE_PX, SIZE_PX, 3), np.nan, np.float32)
    train_fn(_batches(strategy, poisoned), tf.constant(1))
    assert float(optimizer.loss_scale) == scale / 2
