"""Pins trainer.losses: hand values, segmentation_models equivalence, dtypes, gradients,
and a loss (and its gradient) that does not depend on the number of replicas."""

import json
import math
import os
import subprocess
import sys
import textwrap

import trainer  # noqa: F401  (selects tf-keras before TensorFlow loads)

# isort: split
from trainer import losses

import numpy as np
import pytest
import segmentation_models as sm
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOOTH = 1e-5


def _mask(rows):
    """A [1, h, w, 1] float32 array from nested lists."""
    array = np.asarray(rows, np.float32)
    return array.reshape((1, *array.shape, 1))


# y_true [[1, 0], [1, 1]], y_pred [[0.9, 0.2], [0.4, 0.7]].
Y_TRUE_2X2 = _mask([[1, 0], [1, 1]])
Y_PRED_2X2 = _mask([[0.9, 0.2], [0.4, 0.7]])
# Soft counts: tp = 0.9 + 0.4 + 0.7 = 2.0; sum(y_pred) = 2.2, so fp = 2.2 - 2.0 = 0.2;
# sum(y_true) = 3, so fn = 3 - 2.0 = 1.0. Dice = (2*2.0 + s) / (2*2.0 + 1.0 + 0.2 + s),
# about 4 / 5.2 = 0.7692, so the loss is about 1.2 / 5.2 = 0.2308.
DICE_2X2 = 1.0 - (2 * 2.0 + SMOOTH) / (2 * 2.0 + 1.0 + 0.2 + SMOOTH)
# Focal, alpha 0.25, gamma 2, per pixel:
#   fg 0.9: 0.25 * 0.1**2 * -ln 0.9 = 0.25 * 0.01 * 0.10536 = 0.00026340
#   bg 0.2: 0.75 * 0.2**2 * -ln 0.8 = 0.75 * 0.04 * 0.22314 = 0.00669431
#   fg 0.4: 0.25 * 0.6**2 * -ln 0.4 = 0.25 * 0.36 * 0.91629 = 0.08246616
#   fg 0.7: 0.25 * 0.3**2 * -ln 0.7 = 0.25 * 0.09 * 0.35667 = 0.00802519
# mean of the four = 0.09744906 / 4 = 0.02436226.
FOCAL_2X2 = (
    0.25 * 0.1**2 * -math.log(0.9)
    + 0.75 * 0.2**2 * -math.log(0.8)
    + 0.25 * 0.6**2 * -math.log(0.4)
    + 0.25 * 0.3**2 * -math.log(0.7)
) / 4


def _sm_dice_focal(y_true, y_pred, *, per_image=False):
    return sm.losses.DiceLoss(per_image=per_image)(y_true, y_pred) + sm.losses.BinaryFocalLoss()(
        y_true, y_pred
    )


def test_hand_values_2x2():
    np.testing.assert_allclose(losses.dice_loss(Y_TRUE_2X2, Y_PRED_2X2), [DICE_2X2], rtol=1e-6)
    np.testing.assert_allclose(
        losses.binary_focal_loss(Y_TRUE_2X2, Y_PRED_2X2), [FOCAL_2X2], rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.dice_focal(Y_TRUE_2X2, Y_PRED_2X2), [DICE_2X2 + FOCAL_2X2], rtol=1e-6
    )


def test_examples_are_independent():
    # Second example: empty mask predicted empty. Dice: tp = fp = fn = 0, so
    # (0 + s) / (0 + s) = 1 and the loss is 0; focal: p clips to 1e-7, giving
    # 0.75 * (1e-7)**2 * -ln(1 - 1e-7), about 7.5e-21 per pixel, i.e. 0.
    y_true = np.concatenate([Y_TRUE_2X2, np.zeros_like(Y_TRUE_2X2)])
    y_pred = np.concatenate([Y_PRED_2X2, np.zeros_like(Y_PRED_2X2)])
    per_example = losses.dice_focal(y_true, y_pred)
    assert per_example.shape == (2,)
    np.testing.assert_allclose(per_example, [DICE_2X2 + FOCAL_2X2, 0.0], rtol=1e-6, atol=1e-12)


def test_perfect_prediction_3x3_is_near_zero():
    # A 3x3 mask predicted exactly: tp = sum(y_true) = 5, fp = fn = 0, so Dice =
    # (10 + s) / (10 + s) = 1. Focal: p clips to 1e-7 or 1 - 1e-7, so each pixel costs about
    # 0.75 * (1e-7)**2 * 1e-7 or 0.25 * (1e-7)**2 * 1e-7, far below 1e-12.
    y_true = _mask([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert float(losses.dice_focal(y_true, y_true)[0]) < 1e-12


@pytest.mark.parametrize("shape", [(1, 7, 5, 1), (1, 16, 16, 1), (1, 4, 6, 3)])
def test_equals_segmentation_models_for_one_example(shape):
    rng = np.random.default_rng(sum(shape))
    y_true = (rng.random(shape) > 0.5).astype(np.float32)
    y_pred = rng.random(shape).astype(np.float32)
    y_pred.flat[:4] = [0.0, 1.0, 0.0, 1.0]  # exercise the clipping at both ends
    y_true.flat[:4] = [0.0, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(
        losses.dice_loss(y_true, y_pred), [sm.losses.DiceLoss()(y_true, y_pred)], rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.binary_focal_loss(y_true, y_pred),
        [sm.losses.BinaryFocalLoss()(y_true, y_pred)],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        losses.dice_focal(y_true, y_pred), [_sm_dice_focal(y_true, y_pred)], rtol=1e-6
    )


def test_batch_mean_is_per_image_not_pooled():
    rng = np.random.default_rng(1)
    y_true = (rng.random((4, 8, 8, 1)) > 0.5).astype(np.float32)
    y_true[0] = 0.0  # an empty photo: Dice 1 alone, a small part of the pooled sums
    y_pred = rng.random((4, 8, 8, 1)).astype(np.float32)
    mean = float(tf.reduce_mean(losses.dice_focal(y_true, y_pred)))
    np.testing.assert_allclose(mean, _sm_dice_focal(y_true, y_pred, per_image=True), rtol=1e-6)
    # sm's default pools tp/fp/fn over the batch, which no sum over examples (and so no
    # split over replicas) can reproduce.
    assert abs(mean - float(_sm_dice_focal(y_true, y_pred))) > 1e-2


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_give_float32_loss(dtype):
    y_true = tf.cast(Y_TRUE_2X2, dtype)
    y_pred = tf.cast(Y_PRED_2X2, dtype)
    loss = losses.dice_focal(y_true, y_pred)
    assert loss.dtype == tf.float32
    # Same as float32 on the rounded probabilities (0.9 is not exact in 16 bits).
    expected = losses.dice_focal(Y_TRUE_2X2, tf.cast(y_pred, tf.float32))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_gradient_finite_at_probabilities_zero_and_one():
    # Every combination of truth {0, 1} and prediction {0, 1}: right and wrong, certain.
    y_true = _mask([[0, 0], [1, 1]])
    y_pred = tf.Variable(_mask([[0, 1], [0, 1]]))
    with tf.GradientTape() as tape:
        loss = losses.dice_focal(y_true, y_pred)
    gradient = tape.gradient(loss, y_pred)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(gradient))
    assert np.any(gradient.numpy() != 0)


def test_works_under_xla_compile():
    compiled = tf.function(losses.dice_focal, jit_compile=True)
    np.testing.assert_allclose(compiled(Y_TRUE_2X2, Y_PRED_2X2), [DICE_2X2 + FOCAL_2X2], rtol=1e-6)


def test_rejects_mask_without_channel_axis():
    with pytest.raises(ValueError, match="trailing channel axis"):
        losses.dice_focal(Y_TRUE_2X2[..., 0], Y_PRED_2X2)


# Logical CPU devices must be configured before TensorFlow initialises, which the tests
# above have already done in this process; so the distributed check runs in its own.
_REPLICA_SCRIPT = textwrap.dedent(
    """
    import json

    import trainer  # noqa: F401

    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

    from trainer import losses, metrics

    GLOBAL_BATCH_SIZE = 4
    rng = np.random.default_rng(0)
    y_true = (rng.random((GLOBAL_BATCH_SIZE, 6, 6, 1)) > 0.6).astype(np.float32)
    logits = rng.normal(size=(GLOBAL_BATCH_SIZE, 6, 6, 1)).astype(np.float32)
    scale = tf.constant(1.3)  # stands in for a model weight

    def step(y_true, logits, scale):
        with tf.GradientTape() as tape:
            tape.watch(scale)
            y_pred = tf.sigmoid(scale * logits)
            loss = tf.nn.compute_average_loss(
                losses.dice_focal(y_true, y_pred), global_batch_size=GLOBAL_BATCH_SIZE
            )
        return (loss, tape.gradient(loss, scale), *metrics.confusion_sums(y_true, y_pred))

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    per_replica = GLOBAL_BATCH_SIZE // strategy.num_replicas_in_sync

    def shard(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: array[ctx.replica_id_in_sync_group * per_replica :][:per_replica]
        )

    @tf.function
    def distributed_step(y_true, logits):
        outputs = strategy.run(step, args=(y_true, logits, scale))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in outputs]

    def as_json(values):
        return [v.numpy().item() for v in values]

    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "one": as_json(step(tf.constant(y_true), tf.constant(logits), scale)),
        "two": as_json(distributed_step(shard(y_true), shard(logits))),
    }))
    """
)


def test_one_replica_equals_two_replicas(tmp_path):
    script = tmp_path / "replicas.py"
    script.write_text(_REPLICA_SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    (loss_1, grad_1, *sums_1), (loss_2, grad_2, *sums_2) = report["one"], report["two"]
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-6)
    np.testing.assert_allclose(grad_2, grad_1, rtol=1e-5)
    assert sums_2 == sums_1  # tp, fp, fn: exact integers
    assert all(isinstance(count, int) for count in sums_2)
