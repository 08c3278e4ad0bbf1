"""Exact confusion counts of thresholded predictions, and IoU / F1 computed from them.

Metrics are kept as integer sums (true positives, false positives, false negatives)
rather than as per-batch scores: sums add across batches and replicas exactly, so the
IoU of a validation set is the same on 1 device or 8 and does not depend on how it was
batched (the seed averaged per-batch scores, which weights small last batches wrongly).
The caller all-reduces the sums, accumulates them on the host as Python ints, and
divides once with `iou_from_sums` / `fscore_from_sums`.

Thresholding follows segmentation_models 1.0.1 (`IOUScore(threshold=0.5)`,
`FScore(threshold=0.5)`): a pixel is predicted foreground when `y_pred > threshold`,
strictly, so a probability of exactly 0.5 is background.

Multi-class counts (`class_confusion`) are per class, the predicted class being the argmax
of the softmax outputs; pixels with the ignore label count nowhere. `scores_from_sums`
reports per-class scores and their mean over the foreground classes (class 0, the
background, is usually most of the image and would flatter the mean).
"""

import tensorflow as tf

_PER_EXAMPLE_AXES = (1, 2, 3)
_SPATIAL_AXES = (1, 2)


def per_example_confusion(y_true, y_pred, threshold=0.5, counted=None):
    """Counts true positives, false positives and false negatives of each example.

    Args:
      y_true: `[batch, height, width, channels]` mask in {0, 1}, any dtype; values
        above 0.5 are foreground.
      y_pred: `[batch, height, width, channels]` probabilities, any float dtype.
      threshold: a pixel is predicted foreground when `y_pred > threshold` (strict, as
        in segmentation_models).
      counted: optional `[batch, height, width, 1]`: pixels where it is 0 count
        nowhere (the overlap a neighbouring square counts, `trainer.tiling`).

    Returns:
      `(tp, fp, fn)`, each a `[batch]` int32 tensor of pixel counts (int32 holds
      2**31 - 1 pixels, over 14,000 images of 384 x 384).
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if not (y_pred.shape.rank in (None, 4) and y_true.shape.is_compatible_with(y_pred.shape)):
        raise ValueError(
            "y_true and y_pred must both be [batch, height, width, channels], got shapes "
            f"{y_true.shape} and {y_pred.shape}."
        )
    # Compared in float32 so that the threshold means the same under mixed precision.
    truth = tf.cast(y_true, tf.float32) > 0.5
    predicted = tf.cast(y_pred, tf.float32) > threshold
    if counted is not None:
        is_counted = tf.cast(counted, tf.float32) > 0
        truth &= is_counted
        predicted &= is_counted

    def count(mask):
        return tf.reduce_sum(tf.cast(mask, tf.int32), axis=_PER_EXAMPLE_AXES)

    tp = count(truth & predicted)
    fp = count(~truth & predicted)
    fn = count(truth & ~predicted)
    return tp, fp, fn


def confusion_sums(y_true, y_pred, threshold=0.5):
    """Counts true positives, false positives and false negatives over the whole batch.

    Args:
      y_true: `[batch, height, width, 1]` mask in {0, 1}.
      y_pred: `[batch, height, width, 1]` probabilities, any float dtype.
      threshold: a pixel is predicted foreground when `y_pred > threshold`.

    Returns:
      `(tp, fp, fn)`, int32 scalars: sums of `per_example_confusion` over the batch,
      to be summed across replicas (`ReduceOp.SUM`) and batches.
    """
    tp, fp, fn = per_example_confusion(y_true, y_pred, threshold)
    return tf.reduce_sum(tp), tf.reduce_sum(fp), tf.reduce_sum(fn)


def _as_counts(tp, fp, fn):
    counts = tuple(float(c) for c in (tp, fp, fn))
    if min(counts) < 0:
        raise ValueError(f"confusion counts must be non-negative, got tp, fp, fn = {counts}.")
    return counts


def iou_from_sums(tp, fp, fn):
    """Intersection over union, tp / (tp + fp + fn).

    When the denominator is 0 (no foreground in the masks nor in the predictions), the
    prediction agrees with the truth everywhere, so the score is 1.0 rather than
    undefined. That is also the limit of segmentation_models' smoothed score
    (tp + smooth) / (tp + fp + fn + smooth), so photos without the object (legitimate in
    the data) score as they did for the seed.

    Args:
      tp: true positive count (int, float, numpy or eager scalar).
      fp: false positive count.
      fn: false negative count.

    Returns:
      A Python float in [0, 1].
    """
    tp, fp, fn = _as_counts(tp, fp, fn)
    denominator = tp + fp + fn
    return tp / denominator if denominator > 0 else 1.0


def fscore_from_sums(tp, fp, fn):
    """F1 score (Dice coefficient), 2 tp / (2 tp + fp + fn).

    When the denominator is 0 (no foreground in the masks nor in the predictions), the
    score is 1.0, for the reason given in `iou_from_sums`.

    Args:
      tp: true positive count (int, float, numpy or eager scalar).
      fp: false positive count.
      fn: false negative count.

    Returns:
      A Python float in [0, 1].
    """
    tp, fp, fn = _as_counts(tp, fp, fn)
    denominator = 2.0 * tp + fp + fn
    return 2.0 * tp / denominator if denominator > 0 else 1.0


def class_confusion(y_true, y_pred, *, num_classes, ignore_label=255, threshold=0.5, counted=None):
    """Counts true positives, false positives and false negatives per example and class.

    Binary (`num_classes == 1`): `per_example_confusion(y_true, y_pred, threshold)` with a
    trailing class axis of 1; `ignore_label` is unused.

    Multi-class: the predicted class of a pixel is the argmax of `y_pred` (which of tied
    classes wins is up to TensorFlow); for each class c, tp counts pixels with truth c
    and prediction c, fp prediction c and truth not c, fn truth c and prediction not c.
    Pixels labelled `ignore_label` count nowhere. A label that is neither the ignore
    label nor in [0, K) is truth of no class: the pixel is a false positive of its
    predicted class and counts nowhere else.

    Args:
      y_true: binary: `[batch, height, width, 1]` mask in {0, 1}; multi-class:
        `[batch, height, width, 1]` class indices, any dtype holding integers.
      y_pred: `[batch, height, width, num_classes]` probabilities, any float dtype.
      num_classes: 1 for binary, else K >= 2, the last axis of `y_pred`.
      ignore_label: multi-class: pixels with this label count nowhere; None ignores
        nothing.
      threshold: binary only: a pixel is predicted foreground when `y_pred > threshold`.
      counted: optional `[batch, height, width, 1]`: pixels where it is 0 count nowhere.

    Returns:
      `(tp, fp, fn)`, each a `[batch, C]` int32 tensor of pixel counts, C = 1 for binary
      and `num_classes` otherwise; sum them over the batch, replicas and batches.

    Raises:
      ValueError: on shapes other than the above.
    """
    if num_classes == 1:
        confusion = per_example_confusion(y_true, y_pred, threshold, counted)
        return tuple(c[:, tf.newaxis] for c in confusion)
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if not (
        y_pred.shape.is_compatible_with([None, None, None, num_classes])
        and y_true.shape.is_compatible_with([None, None, None, 1])
        and y_true.shape[:3].is_compatible_with(y_pred.shape[:3])
    ):
        raise ValueError(
            f"y_true must be [batch, height, width, 1] class indices and y_pred "
            f"[batch, height, width, {num_classes}] probabilities, got shapes {y_true.shape} "
            f"and {y_pred.shape}."
        )
    labels = tf.cast(y_true[..., 0], tf.int32)
    predicted_class = tf.argmax(tf.cast(y_pred, tf.float32), axis=-1, output_type=tf.int32)
    # tf.one_hot gives a row of zeros for labels outside [0, K): truth of no class.
    truth = tf.one_hot(labels, num_classes, dtype=tf.int32)
    predicted = tf.one_hot(predicted_class, num_classes, dtype=tf.int32)
    if ignore_label is not None:
        valid = tf.cast(tf.not_equal(labels, ignore_label), tf.int32)[..., tf.newaxis]
        truth *= valid
        predicted *= valid
    if counted is not None:
        is_counted = tf.cast(tf.cast(counted, tf.float32) > 0, tf.int32)
        truth *= is_counted
        predicted *= is_counted
    tp = tf.reduce_sum(truth * predicted, axis=_SPATIAL_AXES)
    fp = tf.reduce_sum(predicted, axis=_SPATIAL_AXES) - tp
    fn = tf.reduce_sum(truth, axis=_SPATIAL_AXES) - tp
    return tp, fp, fn


def scores_from_sums(tp, fp, fn, class_names):
    """IoU and F1 per class, and their mean over the foreground classes.

    The foreground is the one class of binary counts (C = 1), else classes 1..C-1 (class 0
    is the background). A foreground class absent from both truth and prediction
    (tp + fp + fn == 0) is left out of the mean, as `tf.keras.metrics.MeanIoU` leaves out
    classes with an empty denominator; when every one is absent, the mean is 1.0 (nothing
    to find, nothing found), as in `iou_from_sums`.

    Args:
      tp: C true positive counts (a list or numpy array of ints), one per class.
      fp: C false positive counts.
      fn: C false negative counts.
      class_names: C distinct names, e.g. from `class_names_for`.

    Returns:
      `{"iou": float, "fscore": float, "per_class": {name: {"iou": float, "fscore": float}}}`,
      `per_class` holding every class, the background included.

    Raises:
      ValueError: when the lengths differ, there are no classes, or names repeat.
    """
    names = tuple(class_names)
    counts = list(zip(tp, fp, fn))
    if not (len(names) == len(tp) == len(fp) == len(fn) > 0):
        raise ValueError(
            "tp, fp, fn and class_names must have the same, non-zero length, got "
            f"{len(tp)}, {len(fp)}, {len(fn)} and {len(names)}."
        )
    _check_distinct(names)
    per_class = {
        name: {"iou": iou_from_sums(*c), "fscore": fscore_from_sums(*c)}
        for name, c in zip(names, counts)
    }
    foreground = range(len(names)) if len(names) == 1 else range(1, len(names))
    present = [names[i] for i in foreground if sum(_as_counts(*counts[i])) > 0]

    def mean(score):
        if not present:
            return 1.0
        return sum(per_class[name][score] for name in present) / len(present)

    return {"iou": mean("iou"), "fscore": mean("fscore"), "per_class": per_class}


def class_names_for(num_classes, class_names=()):
    """The class names to report for `num_classes` model outputs.

    Binary (`num_classes == 1`): the one given name, else `("foreground",)`. Multi-class:
    the given names, else `("background", "class_1", ..., "class_{K-1}")`.

    Args:
      num_classes: 1 for binary, else K >= 2.
      class_names: no names, or exactly `num_classes` distinct names (a binary model's
        one name is that of its foreground).

    Returns:
      A tuple of `num_classes` names.

    Raises:
      ValueError: when `num_classes` is below 1, or names are given but not
        `num_classes` distinct ones.
    """
    names = tuple(class_names)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    if names:
        if len(names) != num_classes:
            raise ValueError(
                f"class_names must name each of the {num_classes} classes, got {len(names)}: "
                f"{names}."
            )
        _check_distinct(names)
        return names
    if num_classes == 1:
        return ("foreground",)
    return ("background", *(f"class_{i}" for i in range(1, num_classes)))


def _check_distinct(names):
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct, got {names}.")
