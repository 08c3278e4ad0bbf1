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
"""

import tensorflow as tf

_PER_EXAMPLE_AXES = (1, 2, 3)


def per_example_confusion(y_true, y_pred, threshold=0.5):
    """Counts true positives, false positives and false negatives of each example.

    Args:
      y_true: `[batch, height, width, channels]` mask in {0, 1}, any dtype; values
        above 0.5 are foreground.
      y_pred: `[batch, height, width, channels]` probabilities, any float dtype.
      threshold: a pixel is predicted foreground when `y_pred > threshold` (strict, as
        in segmentation_models).

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
