"""Per-example segmentation losses: Dice plus focal, binary (the seed's) and multi-class.

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

Multi-class (`categorical_dice_focal`) takes softmax probabilities over K classes and masks
of label indices, where pixels holding an ignore label (unannotated borders, say) count
nowhere. For one example without ignored pixels it equals
`sm.losses.DiceLoss() + sm.losses.CategoricalFocalLoss()`; it departs from
segmentation_models only where that would make class weights change the loss scale.
"""

import numpy as np
import tensorflow as tf

# segmentation_models' default `smooth`, added to the numerator and denominator of the
# Dice score: an example whose mask and prediction are both empty scores 1 (loss 0).
DICE_SMOOTH = 1e-5
# segmentation_models clips probabilities to [eps, 1 - eps] with Keras' `epsilon()`, whose
# default is 1e-7; it is a constant here so that the loss reads no global Keras state.
PROBABILITY_EPS = 1e-7
# segmentation_models' CategoricalFocalLoss defaults; class weights go on top of alpha.
_FOCAL_ALPHA = 0.25
_FOCAL_GAMMA = 2.0

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


def _dice_scores(y_true, y_pred, smooth):
    """`[batch, channels]` soft Dice scores of float32 `[batch, height, width, channels]`."""
    tp = tf.reduce_sum(y_true * y_pred, axis=_SPATIAL_AXES)
    fp = tf.reduce_sum(y_pred, axis=_SPATIAL_AXES) - tp
    fn = tf.reduce_sum(y_true, axis=_SPATIAL_AXES) - tp
    return (2.0 * tp + smooth) / (2.0 * tp + fn + fp + smooth)


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
    return 1.0 - tf.reduce_mean(_dice_scores(y_true, y_pred, smooth), axis=-1)


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


def binary_cross_entropy(y_true, y_pred):
    """Binary cross-entropy of each example, averaged over its pixels and channels.

    Per pixel, with p = clip(y_pred, 1e-7, 1 - 1e-7): -y log(p) - (1 - y) log(1 - p),
    Keras' `binary_crossentropy` of probabilities.

    Args:
      y_true: `[batch, height, width, channels]` mask in {0, 1}, any float dtype.
      y_pred: `[batch, height, width, channels]` probabilities, any float dtype.

    Returns:
      `[batch]` float32 loss.
    """
    # Focal with gamma 0 weighs the two terms alpha and 1 - alpha: alpha 1/2, twice.
    return 2.0 * binary_focal_loss(y_true, y_pred, alpha=0.5, gamma=0.0)


def dice_focal(y_true, y_pred, *, focal_weight=1.0, cross_entropy_weight=0.0):
    """The seed's loss per example: `dice_loss + focal_weight * binary_focal_loss`.

    With `focal_weight` 1 (the seed's `dice_loss + (1 * focal_loss)`) this equals, for
    one example, `sm.losses.DiceLoss() + sm.losses.BinaryFocalLoss()` of
    segmentation_models 1.0.1. `cross_entropy_weight` adds that many times
    `binary_cross_entropy` (Dice + BCE, with `focal_weight` 0).

    Args:
      y_true: `[batch, height, width, 1]` mask in {0, 1}, any float dtype.
      y_pred: `[batch, height, width, 1]` probabilities, any float dtype.
      focal_weight: weight of the focal term; the Dice term has weight 1.
      cross_entropy_weight: weight of the cross-entropy term (0: none, the seed's).

    Returns:
      `[batch]` float32 loss; reduce it with `tf.nn.compute_average_loss` and the global
      batch size.
    """
    loss = dice_loss(y_true, y_pred)
    if focal_weight:
        loss += focal_weight * binary_focal_loss(y_true, y_pred)
    if cross_entropy_weight:
        loss += cross_entropy_weight * binary_cross_entropy(y_true, y_pred)
    return loss


def _one_hot_truth(labels, probabilities, ignore_label):
    """Checks the shapes; returns float32 one-hot truth, probabilities and the valid mask.

    Truth and probabilities are zeroed at ignored pixels, so every sum over pixels leaves
    them out. The valid mask is `[batch, height, width, 1]` float32, 1 where not ignored.
    """
    labels = tf.convert_to_tensor(labels)
    probabilities = tf.convert_to_tensor(probabilities)
    if probabilities.shape.rank != 4 or probabilities.shape[-1] is None:
        raise ValueError(
            "probabilities must be [batch, height, width, classes] with a static number of "
            f"classes, got shape {probabilities.shape}."
        )
    num_classes = probabilities.shape[-1]
    if num_classes < 2:
        raise ValueError(
            f"probabilities must have at least 2 classes, got {num_classes}; use dice_focal "
            "for a single sigmoid channel."
        )
    if not labels.shape.is_compatible_with([None, None, None, 1]):
        raise ValueError(
            f"labels must be [batch, height, width, 1] class indices, got shape {labels.shape}."
        )
    if not labels.shape[:3].is_compatible_with(probabilities.shape[:3]):
        raise ValueError(
            "labels and probabilities must have the same batch, height and width, got shapes "
            f"{labels.shape} and {probabilities.shape}."
        )
    # The pipeline gives float32 holding integers: exact, so the cast does not round.
    indices = tf.cast(labels[..., 0], tf.int32)
    if ignore_label is None:
        valid = tf.ones_like(indices, tf.float32)
    else:
        valid = tf.cast(tf.not_equal(indices, ignore_label), tf.float32)
    valid = valid[..., tf.newaxis]
    # tf.one_hot gives a row of zeros for indices outside [0, K): the ignore label, and
    # labels >= K that are not ignored (truth of no class).
    truth = tf.one_hot(indices, num_classes, dtype=tf.float32) * valid
    return truth, tf.cast(probabilities, tf.float32) * valid, valid


def _normalised_class_weights(class_weights, num_classes):
    """`[num_classes]` float32 weights with mean 1 (all ones when `class_weights` is None)."""
    if class_weights is None:
        return tf.ones([num_classes], tf.float32)
    weights = np.asarray(class_weights, np.float64)
    if weights.shape != (num_classes,):
        raise ValueError(
            f"class_weights must have one weight per class ({num_classes}), got shape "
            f"{weights.shape}."
        )
    if np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError(f"class_weights must be non-negative and not all 0, got {weights}.")
    return tf.constant(weights * num_classes / weights.sum(), tf.float32)


def categorical_dice_focal(
    labels,
    probabilities,
    *,
    class_weights=None,
    ignore_label=255,
    focal_weight=1.0,
    cross_entropy_weight=0.0,
):
    """Multi-class loss of each example: weighted soft Dice loss + categorical focal loss.

    Dice: soft counts per example and class over the non-ignored pixels (tp = sum(t * p),
    fp = sum(p) - tp, fn = sum(t) - tp, t the one-hot truth), score
    (2 tp + smooth) / (2 tp + fp + fn + smooth), loss 1 - the weighted mean of the scores.
    A class absent from an example and predicted absent scores 1.

    Focal (alpha 0.25, gamma 2): per pixel and class -w * t * alpha * (1 - p)**gamma * log(p),
    p clipped to [1e-7, 1 - 1e-7], w the class weight scaled to mean 1; summed over the
    non-ignored pixels and classes and divided by K times their number of pixels, then
    multiplied by `focal_weight`.

    For one example with no ignored pixel, equal (or no) class weights and
    `focal_weight` 1 this equals
    `sm.losses.DiceLoss() + sm.losses.CategoricalFocalLoss()` of segmentation_models 1.0.1.
    It differs on purpose with class weights: sm's `DiceLoss` multiplies the scores by the
    weights without normalising them, so weights of 3 would triple the loss scale (and
    could make it negative), and sm's focal loss takes one alpha for all classes; here the
    weights are normalised, so only their ratios matter, and they apply per class to both
    terms. Over a batch, the mean equals sm's `DiceLoss(per_image=True)` (not its pooled
    default), for the reason given in the module docstring.

    A label that is neither the ignore label nor in [0, K) is truth of no class: the
    pixel's probabilities count as Dice false positives and its focal term is 0. An
    example whose pixels are all ignored has loss 0.

    Args:
      labels: `[batch, height, width, 1]` class indices in [0, K), any dtype holding
        integers (the pipeline gives float32); class 0 is background.
      probabilities: `[batch, height, width, K]` softmax outputs, K >= 2 and static, any
        float dtype.
      class_weights: None (all classes alike) or K non-negative weights, not all 0; only
        their ratios matter.
      ignore_label: pixels with this label count nowhere; None ignores nothing.
      focal_weight: weight of the focal term; the Dice term has weight 1.
      cross_entropy_weight: weight of a categorical cross-entropy term, -w log(p) of the
        true class averaged over the non-ignored pixels (0: none).

    Returns:
      `[batch]` float32 loss; reduce it with `tf.nn.compute_average_loss` and the global
      batch size.

    Raises:
      ValueError: on shapes other than the above, or class weights not one per class.
    """
    truth, probabilities, valid = _one_hot_truth(labels, probabilities, ignore_label)
    num_classes = probabilities.shape[-1]
    weights = _normalised_class_weights(class_weights, num_classes)

    scores = _dice_scores(truth, probabilities, DICE_SMOOTH)
    dice = 1.0 - tf.reduce_sum(scores * weights, axis=-1) / tf.reduce_sum(weights)

    # Ignored pixels have truth 0, so their (clipped) probabilities add nothing here.
    p = tf.clip_by_value(probabilities, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    focal = -truth * (_FOCAL_ALPHA * tf.pow(1.0 - p, _FOCAL_GAMMA) * tf.math.log(p)) * weights
    valid_pixels = tf.maximum(tf.reduce_sum(valid, axis=_PER_EXAMPLE_AXES), 1.0)
    focal = tf.reduce_sum(focal, axis=_PER_EXAMPLE_AXES) / (num_classes * valid_pixels)
    loss = dice + focal_weight * focal
    if cross_entropy_weight:
        cross_entropy = -truth * tf.math.log(p) * weights
        cross_entropy = tf.reduce_sum(cross_entropy, axis=_PER_EXAMPLE_AXES) / valid_pixels
        loss += cross_entropy_weight * cross_entropy
    return loss


def segmentation_loss(
    labels,
    probabilities,
    *,
    num_classes,
    class_weights=None,
    ignore_label=255,
    focal_weight=1.0,
    cross_entropy_weight=0.0,
):
    """The training loss per example for `num_classes` outputs.

    `num_classes == 1` (one sigmoid channel, masks in {0, 1}) gives `dice_focal`, the
    seed's binary loss, unchanged; `class_weights` and `ignore_label` are then unused.
    Otherwise (K softmax channels, label-index masks) it gives `categorical_dice_focal`.

    Args:
      labels: `[batch, height, width, 1]` mask (binary) or class indices (multi-class).
      probabilities: `[batch, height, width, num_classes]` model outputs.
      num_classes: 1 for binary, else K >= 2, which must be the probabilities' last axis.
      class_weights: multi-class only; see `categorical_dice_focal`.
      ignore_label: multi-class only; see `categorical_dice_focal`.
      focal_weight: weight of the focal term against the Dice term's 1 (the seed's 1).
      cross_entropy_weight: weight of a cross-entropy term (the seed's 0: none).

    Returns:
      `[batch]` float32 loss; reduce it with `tf.nn.compute_average_loss`.

    Raises:
      ValueError: when `num_classes` is below 1 or is not the probabilities' last axis.
    """
    if num_classes == 1:
        return dice_focal(
            labels,
            probabilities,
            focal_weight=focal_weight,
            cross_entropy_weight=cross_entropy_weight,
        )
    channels = tf.convert_to_tensor(probabilities).shape[-1]
    if num_classes < 1 or channels != num_classes:
        raise ValueError(
            f"num_classes must be 1 or the probabilities' last axis, got {num_classes} for "
            f"probabilities with {channels} channels."
        )
    return categorical_dice_focal(
        labels,
        probabilities,
        class_weights=class_weights,
        ignore_label=ignore_label,
        focal_weight=focal_weight,
        cross_entropy_weight=cross_entropy_weight,
    )
