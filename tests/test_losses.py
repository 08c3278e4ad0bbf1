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


# Multi-class: labels [1, 1, 3, 1] = [[0, 1, 255]], K = 2 softmax outputs per pixel.
LABELS_1X3 = np.asarray([0, 1, 255], np.float32).reshape((1, 1, 3, 1))
PROBABILITIES_1X3 = np.asarray([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]], np.float32).reshape(
    (1, 1, 3, 2)
)
# The third pixel is ignored. Class 0: t = [1, 0], p = [0.8, 0.4] -> tp 0.8, fp 0.4, fn 0.2;
# class 1: t = [0, 1], p = [0.2, 0.6] -> tp 0.6, fp 0.2, fn 0.4.
CATEGORICAL_DICE_1X3 = (
    1.0
    - ((1.6 + SMOOTH) / (1.6 + 0.4 + 0.2 + SMOOTH) + (1.2 + SMOOTH) / (1.2 + 0.2 + 0.4 + SMOOTH))
    / 2
)
# Focal: only the true class of each valid pixel costs, over K * 2 valid pixels = 4.
CATEGORICAL_FOCAL_1X3 = (0.25 * 0.2**2 * -math.log(0.8) + 0.25 * 0.4**2 * -math.log(0.6)) / 4


def _random_example(shape, num_classes, *, seed, ignored_fraction=0.0):
    """Labels [b, h, w, 1] (float32, 255 where ignored) and softmax [b, h, w, K]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=(*shape, 1)).astype(np.float32)
    labels[rng.random(labels.shape) < ignored_fraction] = 255
    logits = rng.normal(scale=2.0, size=(*shape, num_classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return labels, probabilities.astype(np.float32)


def _sm_categorical(labels, probabilities, class_weights=None):
    one_hot = tf.one_hot(tf.cast(labels[..., 0], tf.int32), probabilities.shape[-1])
    return sm.losses.DiceLoss(class_weights=class_weights)(
        one_hot, probabilities
    ) + sm.losses.CategoricalFocalLoss()(one_hot, probabilities)


def test_categorical_hand_values_with_an_ignored_pixel():
    loss = losses.categorical_dice_focal(LABELS_1X3, PROBABILITIES_1X3)
    assert loss.dtype == tf.float32 and loss.shape == (1,)
    np.testing.assert_allclose(loss, [CATEGORICAL_DICE_1X3 + CATEGORICAL_FOCAL_1X3], rtol=1e-6)


@pytest.mark.parametrize("focal_weight", [0.0, 10.0])
def test_focal_weight_scales_the_focal_term_only(focal_weight):
    binary = losses.segmentation_loss(
        Y_TRUE_2X2, Y_PRED_2X2, num_classes=1, focal_weight=focal_weight
    )
    np.testing.assert_allclose(binary, [DICE_2X2 + focal_weight * FOCAL_2X2], rtol=1e-6)
    categorical = losses.segmentation_loss(
        LABELS_1X3, PROBABILITIES_1X3, num_classes=2, focal_weight=focal_weight
    )
    expected = CATEGORICAL_DICE_1X3 + focal_weight * CATEGORICAL_FOCAL_1X3
    np.testing.assert_allclose(categorical, [expected], rtol=1e-6)


def test_binary_cross_entropy_term_is_keras_binary_crossentropy():
    # The 2x2 example: -(ln 0.9 + ln 0.8 + ln 0.4 + ln 0.7) / 4 by hand, and Keras agrees.
    by_hand = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.7)) / 4
    keras = tf.reduce_mean(tf.keras.losses.binary_crossentropy(Y_TRUE_2X2, Y_PRED_2X2))
    np.testing.assert_allclose(float(keras), by_hand, rtol=1e-5)
    loss = losses.segmentation_loss(
        Y_TRUE_2X2, Y_PRED_2X2, num_classes=1, focal_weight=0.0, cross_entropy_weight=2.0
    )
    np.testing.assert_allclose(loss, [DICE_2X2 + 2.0 * by_hand], rtol=1e-6)


def test_categorical_cross_entropy_term_leaves_ignored_pixels_out_and_weighs_classes():
    labels = np.array([[[[0], [1], [255]]]], np.float32)
    probabilities = np.array([[[[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]]]], np.float32)
    without = losses.categorical_dice_focal(labels, probabilities, focal_weight=0.0)
    # Two valid pixels: -(ln 0.8 + ln 0.7) / 2; the ignored third counts nowhere.
    plain = -(math.log(0.8) + math.log(0.7)) / 2
    with_term = losses.categorical_dice_focal(
        labels, probabilities, focal_weight=0.0, cross_entropy_weight=1.0
    )
    np.testing.assert_allclose(with_term - without, [plain], rtol=1e-5)
    # Weights (1, 3) normalise to (0.5, 1.5): the class-1 pixel counts three times the other.
    weighted_dice = losses.categorical_dice_focal(
        labels, probabilities, focal_weight=0.0, class_weights=(1.0, 3.0)
    )
    weighted = losses.categorical_dice_focal(
        labels,
        probabilities,
        focal_weight=0.0,
        class_weights=(1.0, 3.0),
        cross_entropy_weight=1.0,
    )
    expected = -(0.5 * math.log(0.8) + 1.5 * math.log(0.7)) / 2
    np.testing.assert_allclose(weighted - weighted_dice, [expected], rtol=1e-5)


@pytest.mark.parametrize("shape, num_classes", [((1, 7, 5), 2), ((1, 16, 16), 3), ((1, 4, 6), 5)])
def test_categorical_equals_segmentation_models_for_one_example(shape, num_classes):
    labels, probabilities = _random_example(shape, num_classes, seed=num_classes)
    # Exercise the clipping at both ends: certain, right and wrong.
    probabilities[0, 0, :2] = np.eye(num_classes)[[1, 1]]
    labels[0, 0, :2, 0] = [1, 0]
    expected = [float(_sm_categorical(labels, probabilities))]
    for class_weights in (None, [1.0] * num_classes):
        loss = losses.categorical_dice_focal(labels, probabilities, class_weights=class_weights)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_categorical_dice_weights_are_sms_weights_normalised_to_mean_one():
    labels, probabilities = _random_example((1, 8, 8), 3, seed=7)
    weights = np.asarray([0.5, 2.0, 3.5])
    # Without the focal term's weights (hand-computed below), Dice is sm's with w * K / sum(w).
    sm_dice = float(
        sm.losses.DiceLoss(class_weights=weights * 3 / weights.sum())(
            tf.one_hot(labels[..., 0].astype(np.int32), 3), probabilities
        )
    )
    one_hot = np.eye(3)[labels[..., 0].astype(np.int32)]
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    focal = -one_hot * 0.25 * (1 - p) ** 2 * np.log(p) * (weights * 3 / weights.sum())
    expected = sm_dice + focal.sum() / (3 * 64)
    loss = losses.categorical_dice_focal(labels, probabilities, class_weights=weights)
    np.testing.assert_allclose(loss, [expected], rtol=1e-5)


def test_categorical_ignored_pixels_do_not_count():
    labels, probabilities = _random_example((2, 6, 7), 4, seed=3, ignored_fraction=0.3)
    ignored = labels[..., 0] == 255
    assert ignored.any() and not ignored.all()
    loss = losses.categorical_dice_focal(labels, probabilities)
    # Whatever is predicted there...
    _, other = _random_example((2, 6, 7), 4, seed=4)
    changed = np.where(ignored[..., np.newaxis], other, probabilities)
    np.testing.assert_allclose(losses.categorical_dice_focal(labels, changed), loss, rtol=1e-7)
    # ...and it is the loss of the image without them: drop an ignored last column.
    labels[:, :, -1] = 255
    cropped = losses.categorical_dice_focal(labels[:, :, :-1], probabilities[:, :, :-1])
    np.testing.assert_allclose(losses.categorical_dice_focal(labels, probabilities), cropped)


def test_categorical_all_ignored_or_no_ignore_label():
    labels, probabilities = _random_example((2, 3, 3), 3, seed=5)
    labels[1] = 255
    loss = losses.categorical_dice_focal(labels, probabilities)
    assert np.all(np.isfinite(loss)) and float(loss[1]) == 0.0
    # ignore_label None: 255 is then truth of no class, so the example costs Dice only.
    unignored = losses.categorical_dice_focal(labels, probabilities, ignore_label=None)
    assert float(unignored[1]) > 0.5
    np.testing.assert_allclose(unignored[0], loss[0], rtol=1e-7)


def test_categorical_label_dtypes_agree():
    labels, probabilities = _random_example((1, 5, 5), 3, seed=6, ignored_fraction=0.2)
    expected = losses.categorical_dice_focal(labels, probabilities)
    for dtype in (np.uint8, np.int32, np.int64):
        loss = losses.categorical_dice_focal(labels.astype(dtype), probabilities)
        np.testing.assert_array_equal(loss, expected)


def test_categorical_equal_class_weights_are_no_weights():
    labels, probabilities = _random_example((2, 6, 6), 3, seed=8, ignored_fraction=0.1)
    np.testing.assert_allclose(
        losses.categorical_dice_focal(labels, probabilities, class_weights=[3.0] * 3),
        losses.categorical_dice_focal(labels, probabilities),
        rtol=1e-6,
    )


def test_categorical_heavier_weight_on_a_bad_class_raises_the_loss():
    # Class 0 predicted well, class 2 badly (its pixels get 0.2 on the right class).
    labels = np.asarray([[0, 0, 1, 2]], np.float32).reshape((1, 1, 4, 1))
    probabilities = np.asarray(
        [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]], np.float32
    ).reshape((1, 1, 4, 3))
    plain = float(losses.categorical_dice_focal(labels, probabilities)[0])
    heavy_bad = losses.categorical_dice_focal(labels, probabilities, class_weights=[1, 1, 4])
    heavy_good = losses.categorical_dice_focal(labels, probabilities, class_weights=[4, 1, 1])
    assert float(heavy_bad[0]) > plain > float(heavy_good[0])


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
def test_categorical_finite_loss_and_gradient_at_zero_and_one(dtype):
    # Certain predictions, right (pixels 0, 1) and wrong (pixels 2, 3), plus an ignored one.
    labels = np.asarray([[0, 1, 0, 2, 255]], np.float32).reshape((1, 1, 5, 1))
    probabilities = tf.Variable(
        tf.cast(np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]].reshape((1, 1, 5, 3)), dtype)
    )
    with tf.GradientTape() as tape:
        loss = losses.categorical_dice_focal(labels, probabilities)
    gradient = tape.gradient(loss, probabilities)
    assert loss.dtype == tf.float32 and gradient.dtype == dtype
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(gradient.numpy()))
    assert np.any(gradient.numpy() != 0)
    # The ignored pixel gets no gradient.
    assert np.all(gradient.numpy()[0, 0, 4] == 0)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_categorical_low_precision_inputs(dtype):
    labels, probabilities = _random_example((2, 4, 4), 3, seed=9, ignored_fraction=0.2)
    rounded = tf.cast(tf.cast(probabilities, dtype), tf.float32)
    loss = losses.categorical_dice_focal(tf.cast(labels, dtype), tf.cast(probabilities, dtype))
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss, losses.categorical_dice_focal(labels, rounded), rtol=1e-6)


def test_categorical_examples_are_independent():
    labels, probabilities = _random_example((2, 5, 6), 4, seed=10, ignored_fraction=0.2)
    both = losses.categorical_dice_focal(labels, probabilities)
    singles = [
        losses.categorical_dice_focal(labels[i : i + 1], probabilities[i : i + 1]) for i in (0, 1)
    ]
    np.testing.assert_allclose(both, np.concatenate(singles), rtol=1e-7)


def test_categorical_one_replica_equals_two_replicas_arithmetic():
    # Each of 2 replicas reduces its half over the global batch; the sum is the 1-replica loss.
    labels, probabilities = _random_example((4, 5, 5), 3, seed=11, ignored_fraction=0.2)
    per_example = losses.categorical_dice_focal(labels, probabilities)
    one = tf.nn.compute_average_loss(per_example, global_batch_size=4)
    halves = [
        tf.nn.compute_average_loss(
            losses.categorical_dice_focal(labels[i : i + 2], probabilities[i : i + 2]),
            global_batch_size=4,
        )
        for i in (0, 2)
    ]
    np.testing.assert_allclose(float(halves[0] + halves[1]), float(one), rtol=1e-6)


def test_categorical_works_under_xla_compile():
    compiled = tf.function(losses.categorical_dice_focal, jit_compile=True)
    np.testing.assert_allclose(
        compiled(LABELS_1X3, PROBABILITIES_1X3),
        [CATEGORICAL_DICE_1X3 + CATEGORICAL_FOCAL_1X3],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "labels_shape, probabilities_shape, class_weights, message",
    [
        ((1, 3, 3), (1, 3, 3, 2), None, "labels must be"),
        ((1, 3, 3, 1), (1, 3, 3, 1), None, "at least 2 classes"),
        ((1, 3, 3, 1), (1, 3, 3), None, "probabilities must be"),
        ((1, 3, 4, 1), (1, 3, 3, 2), None, "same batch, height and width"),
        ((2, 3, 3, 1), (1, 3, 3, 2), None, "same batch, height and width"),
        ((1, 3, 3, 1), (1, 3, 3, 2), [1.0, 1.0, 1.0], "one weight per class"),
        ((1, 3, 3, 1), (1, 3, 3, 2), [0.0, 0.0], "not all 0"),
        ((1, 3, 3, 1), (1, 3, 3, 2), [1.0, -1.0], "non-negative"),
    ],
)
def test_categorical_rejects_bad_arguments(
    labels_shape, probabilities_shape, class_weights, message
):
    with pytest.raises(ValueError, match=message):
        losses.categorical_dice_focal(
            np.zeros(labels_shape, np.float32),
            np.full(probabilities_shape, 0.5, np.float32),
            class_weights=class_weights,
        )


def test_segmentation_loss_dispatches_on_num_classes():
    binary = losses.segmentation_loss(Y_TRUE_2X2, Y_PRED_2X2, num_classes=1, class_weights=[9.0])
    np.testing.assert_array_equal(binary, losses.dice_focal(Y_TRUE_2X2, Y_PRED_2X2))
    multi = losses.segmentation_loss(
        LABELS_1X3, PROBABILITIES_1X3, num_classes=2, class_weights=[1.0, 2.0], ignore_label=None
    )
    np.testing.assert_array_equal(
        multi,
        losses.categorical_dice_focal(
            LABELS_1X3, PROBABILITIES_1X3, class_weights=[1.0, 2.0], ignore_label=None
        ),
    )
    with pytest.raises(ValueError, match="num_classes must be 1 or"):
        losses.segmentation_loss(LABELS_1X3, PROBABILITIES_1X3, num_classes=3)


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
