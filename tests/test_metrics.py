"""Pins trainer.metrics: confusion counts on hand-checked masks, segmentation_models'
threshold semantics, and IoU / F1 from the counts.

That the sums are the same on 1 and 2 replicas is checked, together with the loss, by
`test_losses.test_one_replica_equals_two_replicas` (it needs its own process).
"""

import trainer  # noqa: F401  (selects tf-keras before TensorFlow loads)

# isort: split
from trainer import metrics

import numpy as np
import pytest
import segmentation_models as sm
import tensorflow as tf


def _mask(rows):
    """A [1, h, w, 1] float32 array from nested lists."""
    array = np.asarray(rows, np.float32)
    return array.reshape((1, *array.shape, 1))


def _ints(tensors):
    return tuple(int(t) for t in tensors)


# y_true [[1, 0], [1, 1]], y_pred [[0.9, 0.2], [0.4, 0.7]] -> thresholded [[1, 0], [0, 1]]:
# tp = 2 (0.9, 0.7), fp = 0, fn = 1 (0.4) -> IoU 2 / 3, F1 4 / 5.
Y_TRUE_2X2 = _mask([[1, 0], [1, 1]])
Y_PRED_2X2 = _mask([[0.9, 0.2], [0.4, 0.7]])

# y_true [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
# y_pred [[0.5, 0.51, 0.49], [0.6, 1.0, 0.0], [0.2, 0.5, 0.7]]
# -> y_pred > 0.5: [[0, 1, 0], [1, 1, 0], [0, 0, 1]] (0.5 itself is background)
# tp = 2 at (0,1), (1,1); fp = 2 at (1,0), (2,2); fn = 1 at (0,0)
# -> IoU 2 / (2 + 2 + 1) = 2 / 5, F1 4 / (4 + 2 + 1) = 4 / 7.
# (With >= the two 0.5 pixels would flip: tp = 3, fp = 3, fn = 0.)
Y_TRUE_3X3 = _mask([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
Y_PRED_3X3 = _mask([[0.5, 0.51, 0.49], [0.6, 1.0, 0.0], [0.2, 0.5, 0.7]])


def test_hand_values_2x2():
    tp, fp, fn = metrics.confusion_sums(Y_TRUE_2X2, Y_PRED_2X2)
    assert _ints((tp, fp, fn)) == (2, 0, 1)
    assert metrics.iou_from_sums(tp, fp, fn) == pytest.approx(2 / 3)
    assert metrics.fscore_from_sums(tp, fp, fn) == pytest.approx(4 / 5)


def test_hand_values_3x3_threshold_is_strict():
    tp, fp, fn = metrics.confusion_sums(Y_TRUE_3X3, Y_PRED_3X3)
    assert _ints((tp, fp, fn)) == (2, 2, 1)
    assert metrics.iou_from_sums(tp, fp, fn) == pytest.approx(2 / 5)
    assert metrics.fscore_from_sums(tp, fp, fn) == pytest.approx(4 / 7)


def test_other_threshold():
    # 2x2 at threshold 0.3: [[0.9, 0.2], [0.4, 0.7]] -> [[1, 0], [1, 1]] = y_true exactly.
    assert _ints(metrics.confusion_sums(Y_TRUE_2X2, Y_PRED_2X2, threshold=0.3)) == (3, 0, 0)


def test_same_threshold_as_segmentation_models():
    # sm: (tp + 1e-5) / (tp + fp + fn + 1e-5) = 2.00001 / 5.00001 on the 3x3 above.
    sm_iou = float(sm.metrics.IOUScore(threshold=0.5)(Y_TRUE_3X3, Y_PRED_3X3))
    sm_f1 = float(sm.metrics.FScore(threshold=0.5)(Y_TRUE_3X3, Y_PRED_3X3))
    sums = metrics.confusion_sums(Y_TRUE_3X3, Y_PRED_3X3)
    assert metrics.iou_from_sums(*sums) == pytest.approx(sm_iou, abs=1e-5)
    assert metrics.fscore_from_sums(*sums) == pytest.approx(sm_f1, abs=1e-5)


def test_pooled_sums_match_segmentation_models_on_a_batch():
    rng = np.random.default_rng(0)
    y_true = (rng.random((3, 16, 16, 1)) > 0.5).astype(np.float32)
    # Quantised so that some probabilities are exactly 0.5.
    y_pred = np.round(rng.random((3, 16, 16, 1)) * 8).astype(np.float32) / 8
    sums = metrics.confusion_sums(y_true, y_pred)
    sm_iou = float(sm.metrics.IOUScore(threshold=0.5)(y_true, y_pred))
    sm_f1 = float(sm.metrics.FScore(threshold=0.5)(y_true, y_pred))
    assert metrics.iou_from_sums(*sums) == pytest.approx(sm_iou, abs=1e-5)
    assert metrics.fscore_from_sums(*sums) == pytest.approx(sm_f1, abs=1e-5)


def test_per_example_counts_sum_to_batch_counts():
    # Batch: the 2x2 above (2, 0, 1), then an empty mask predicted empty (0, 0, 0).
    y_true = np.concatenate([Y_TRUE_2X2, np.zeros_like(Y_TRUE_2X2)])
    y_pred = np.concatenate([Y_PRED_2X2, np.full_like(Y_PRED_2X2, 0.1)])
    tp, fp, fn = metrics.per_example_confusion(y_true, y_pred, threshold=0.5)
    for counts in (tp, fp, fn):
        assert counts.dtype == tf.int32 and counts.shape == (2,)
    assert [list(c.numpy()) for c in (tp, fp, fn)] == [[2, 0], [0, 0], [1, 0]]
    sums = metrics.confusion_sums(y_true, y_pred)
    assert all(s.dtype == tf.int32 and s.shape == () for s in sums)
    assert _ints(sums) == (2, 0, 1)
    # The empty example is perfect on its own (denominators 0 -> 1.0).
    assert metrics.iou_from_sums(tp[1], fp[1], fn[1]) == 1.0


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_predictions(dtype):
    # 0.51 rounds to 0.5098 (float16) or 0.5117 (bfloat16), still above 0.5; 0.5 stays 0.5.
    sums = metrics.confusion_sums(tf.cast(Y_TRUE_3X3, dtype), tf.cast(Y_PRED_3X3, dtype))
    assert _ints(sums) == (2, 2, 1)


def test_works_under_xla_compile():
    compiled = tf.function(metrics.confusion_sums, jit_compile=True)
    assert _ints(compiled(Y_TRUE_3X3, Y_PRED_3X3)) == (2, 2, 1)


def test_scores_of_empty_and_disjoint_masks():
    # Nothing to find and nothing found: full agreement.
    assert metrics.iou_from_sums(0, 0, 0) == 1.0
    assert metrics.fscore_from_sums(0, 0, 0) == 1.0
    # Everything wrong: tp = 0 -> 0 / (0 + 3 + 4) = 0.
    assert metrics.iou_from_sums(0, 3, 4) == 0.0
    assert metrics.fscore_from_sums(0, 3, 4) == 0.0


def test_scores_accept_numpy_and_big_python_ints():
    # Sums accumulated on the host over a whole data set outgrow int32 (2**31 - 1).
    assert metrics.iou_from_sums(2**40, 2**40, 0) == pytest.approx(1 / 2)
    # 2 * 6 / (2 * 6 + 2 + 2) = 12 / 16
    score = metrics.fscore_from_sums(np.int64(6), np.int32(2), tf.constant(2))
    assert isinstance(score, float) and score == pytest.approx(3 / 4)


def test_scores_reject_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        metrics.iou_from_sums(1, -1, 0)


def test_rejects_mask_without_channel_axis():
    with pytest.raises(ValueError, match="batch, height, width, channels"):
        metrics.confusion_sums(Y_TRUE_2X2[..., 0], Y_PRED_2X2)
