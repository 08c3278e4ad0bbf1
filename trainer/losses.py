"""Per-example segmentation losses: Dice, binary focal, and their sum (the seed's loss).

Each loss returns one value per example, shape `[batch]`, so that the train step can
reduce with `tf.nn.compute_average_loss(per_example, global_batch_size=...)` and get
gradients that do not depend on how the global batch is split across replicas.

The formulas, smoothing and clipping follow segmentation_models 1.0.1 (`DiceLoss`,
`BinaryFocalLoss`): for a batch of one example, `dice_focal` equals
`sm.losses.DiceLoss() + sm.losses.BinaryFocalLoss()`. segmentation_models' `DiceLoss`
pools true positives over the whole batch (`per_image=False`); that pooled value is not a
sum over examples, so it cannot be split across replicas, and it is not used here. Over a
batch, the mean of `dice_focal` equals `DiceLoss(per_image=True) + BinaryFocalLoss()`.

Inputs may be float16 or bfloat16 under mixed precision; everything is computed in
float32, which the `log` of clipped probabilities needs (1 - 1e-7 rounds to 1 in float16).
"""

import tensorflow as tf

# segmentation_models' default `smooth`, added to the numerator and denominator of the
# Dice score: an example whose mask and prediction are both empty scores 1 (loss 0).
DICE_SMOOTH = 1e-5
# segmentation_models clips probabilities to [eps, 1 - eps] with Keras' `epsilon()`, whose
# default is 1e-7; it is a constant here so that the loss reads no global Keras state.
PROBABILITY_EPS = 1e-7

# [batch, height, width, channels]: the Dice sums are per example and channel.
_SPATIAL_AXES = (1, 2)
_PER_EXAMPLE_AXES = (1, 2, 3)


def _as_float32(y_true, y_pred):
    """Checks that both are `[batch, height, width, channels]` and casts them to float32."""
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    # A [batch, height, width] mask would silently broadcast against the prediction.
    if not (y_pred.shape.rank in (None, 4) and y_true.shape.is_compatible_with(y_pred.shape)):
        raise ValueError(
            "y_true and y_pred must both be [batch, height, width, channels], got shapes "
            f"{y_true.shape} and {y_pred.shape}; give masks a trailing channel axis."
        )
    return tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)


def dice_loss(y_true, y_pred, *, smooth=DICE_SMOOTH):
    """Soft Dice loss of each example: 1 - (2 tp + smooth) / (2 tp + fp + fn + smooth).

    tp, fp and fn are soft counts per example and channel (tp = sum(y_true * y_pred),
    fp = sum(y_pred) - tp, fn = sum(y_true) - tp); the Dice scores of the channels are
    averaged before subtracting from 1, as segmentation_models does.

    Args:
      y_true: `[batch, height, width, channels]` mask in {0, 1}, any float dtype.
      y_pred: `[batch, height, width, channels]` probabilities (sigmoid outputs), any
        float dtype.
      smooth: added to numerator and denominator; keeps an empty mask predicted empty
        at loss 0 instead of 0 / 0.

    Returns:
      `[batch]` float32 loss in [0, 1].
    """
    y_true, y_pred = _as_float32(y_true, y_pred)
    tp = tf.reduce_sum(y_true * y_pred, axis=_SPATIAL_AXES)
    fp = tf.reduce_sum(y_pred, axis=_SPATIAL_AXES) - tp
    fn = tf.reduce_sum(y_true, axis=_SPATIAL_AXES) - tp
    score = (2.0 * tp + smooth) / (2.0 * tp + fn + fp + smooth)
    return 1.0 - tf.reduce_mean(score, axis=-1)


def binary_focal_loss(y_true, y_pred, *, alpha=0.25, gamma=2.0):
    """Binary focal loss of each example, averaged over its pixels and channels.

    Per pixel, with p = clip(y_pred, 1e-7, 1 - 1e-7):
      - y_true * alpha * (1 - p)**gamma * log(p)
      - (1 - y_true) * (1 - alpha) * p**gamma * log(1 - p)

    Args:
      y_true: `[batch, height, width, channels]` mask in {0, 1}, any float dtype.
      y_pred: `[batch, height, width, channels]` probabilities, any float dtype.
      alpha: weight of the foreground term; the background term gets 1 - alpha.
      gamma: focusing exponent; 0 gives weighted binary cross-entropy.

    Returns:
      `[batch]` float32 loss, finite (and with finite gradients) even where y_pred is
      exactly 0 or 1, thanks to the clipping.
    """
    y_true, y_pred = _as_float32(y_true, y_pred)
    p = tf.clip_by_value(y_pred, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    foreground = -y_true * (alpha * tf.pow(1.0 - p, gamma) * tf.math.log(p))
    background = -(1.0 - y_true) * ((1.0 - alpha) * tf.pow(p, gamma) * tf.math.log(1.0 - p))
    return tf.reduce_mean(background + foreground, axis=_PER_EXAMPLE_AXES)


def dice_focal(y_true, y_pred):
    """The seed's loss per example: `dice_loss + binary_focal_loss` with default arguments.

    For one example this equals `sm.losses.DiceLoss() + sm.losses.BinaryFocalLoss()` of
    segmentation_models 1.0.1.

    Args:
      y_true: `[batch, height, width, 1]` mask in {0, 1}, any float dtype.
      y_pred: `[batch, height, width, 1]` probabilities, any float dtype.

    Returns:
      `[batch]` float32 loss; reduce it with `tf.nn.compute_average_loss` and the global
      batch size.
    """
    return dice_loss(y_true, y_pred) + binary_focal_loss(y_true, y_pred)
