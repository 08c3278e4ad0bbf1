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


# Multi-class, K = 3, one 3x3 example; (2, 0) is ignored (255), predicted class 1.
#   labels     [[0, 1, 1], [2, 2, 0], [255, 1, 0]]
#   prediction [[0, 1, 2], [2, 0, 0], [1,   1, 2]]
# class 0: truth (0,0) (1,2) (2,2), predicted (0,0) (1,1) (1,2) -> tp 2, fp 1, fn 1
# class 1: truth (0,1) (0,2) (2,1), predicted (0,1) (2,1)       -> tp 2, fp 0, fn 1
# class 2: truth (1,0) (1,1), predicted (0,2) (1,0) (2,2)       -> tp 1, fp 2, fn 1
LABELS_3X3 = np.asarray([[0, 1, 1], [2, 2, 0], [255, 1, 0]], np.float32).reshape((1, 3, 3, 1))
PREDICTED_3X3 = np.asarray([[0, 1, 2], [2, 0, 0], [1, 1, 2]])
# Softmax-like outputs whose argmax is PREDICTED_3X3: 0.8 on it, 0.1 elsewhere.
PROBABILITIES_3X3 = (0.1 + 0.7 * np.eye(3, dtype=np.float32)[PREDICTED_3X3])[np.newaxis]
COUNTS_3X3 = ([2, 2, 1], [1, 0, 2], [1, 1, 1])


def _lists(tensors):
    return tuple(t.numpy().tolist() for t in tensors)


def test_class_confusion_hand_values_3x3():
    counts = metrics.class_confusion(LABELS_3X3, PROBABILITIES_3X3, num_classes=3)
    for c in counts:
        assert c.dtype == tf.int32 and c.shape == (1, 3)
    assert _lists(counts) == tuple([row] for row in COUNTS_3X3)


def test_class_confusion_ignored_pixels_count_nowhere():
    # Whatever is predicted at the ignored pixel, the counts stay.
    for predicted_class in range(3):
        probabilities = PROBABILITIES_3X3.copy()
        probabilities[0, 2, 0] = np.eye(3)[predicted_class]
        counts = metrics.class_confusion(LABELS_3X3, probabilities, num_classes=3)
        assert _lists(counts) == tuple([row] for row in COUNTS_3X3)
    # An ignore label inside [0, K) masks the truth too: ignoring 0 leaves out (0,0),
    # (1,2), (2,2) and makes 255 at (2,0) truth of no class (an fp of class 1).
    counts = metrics.class_confusion(LABELS_3X3, PROBABILITIES_3X3, num_classes=3, ignore_label=0)
    assert _lists(counts) == ([[0, 2, 1]], [[1, 1, 1]], [[0, 1, 1]])
    # Every pixel ignored: nothing counts.
    counts = metrics.class_confusion(
        np.full_like(LABELS_3X3, 7), PROBABILITIES_3X3, num_classes=3, ignore_label=7
    )
    assert _lists(counts) == ([[0, 0, 0]],) * 3


def test_class_confusion_label_out_of_range_is_a_false_positive_only():
    # Not ignored, 255 is truth of no class: one more fp of class 1 (its prediction).
    counts = metrics.class_confusion(
        LABELS_3X3, PROBABILITIES_3X3, num_classes=3, ignore_label=None
    )
    tp, fp, fn = COUNTS_3X3
    assert _lists(counts) == ([tp], [[1, 1, 2]], [fn])
    # Likewise a label of 3 with K = 3 and the default ignore label.
    labels = np.where(LABELS_3X3 == 255, 3, LABELS_3X3)
    assert _lists(metrics.class_confusion(labels, PROBABILITIES_3X3, num_classes=3)) == _lists(
        counts
    )


def test_class_confusion_binary_is_per_example_confusion():
    y_true = np.concatenate([Y_TRUE_3X3, Y_TRUE_3X3.transpose((0, 2, 1, 3))])
    y_pred = np.concatenate([Y_PRED_3X3, np.full_like(Y_PRED_3X3, 0.4)])
    for threshold in (0.5, 0.3):
        counts = metrics.class_confusion(y_true, y_pred, num_classes=1, threshold=threshold)
        expected = metrics.per_example_confusion(y_true, y_pred, threshold)
        for c, e in zip(counts, expected):
            assert c.dtype == tf.int32 and c.shape == (2, 1)
            assert c.numpy()[:, 0].tolist() == e.numpy().tolist()


def test_class_confusion_batch_dtypes_and_xla():
    # Two examples (the second all background, predicted all background) and other dtypes.
    labels = np.concatenate([LABELS_3X3, np.zeros_like(LABELS_3X3)]).astype(np.uint8)
    probabilities = np.concatenate(
        [PROBABILITIES_3X3, np.full_like(PROBABILITIES_3X3, [0.5, 0.3, 0.2])]
    )
    compiled = tf.function(metrics.class_confusion, jit_compile=True)
    counts = compiled(labels, tf.cast(probabilities, tf.float16), num_classes=3)
    tp, fp, fn = COUNTS_3X3
    assert _lists(counts) == ([tp, [9, 0, 0]], [fp, [0, 0, 0]], [fn, [0, 0, 0]])


def test_class_confusion_sums_agree_with_keras_iou():
    # Keras' IoU over the foreground ids, ignored pixels given weight 0, absent classes
    # (empty denominator) left out of the mean: the same definition as scores_from_sums.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(3, 8, 8, 1)).astype(np.float32)
    labels[labels == 3] = 1  # class 3 absent from the truth...
    labels[rng.random(labels.shape) < 0.2] = 255
    probabilities = rng.random((3, 8, 8, 4)).astype(np.float32)
    probabilities[..., 3] = 0.0  # ...and from the predictions
    tp, fp, fn = (
        np.sum(c.numpy(), axis=0)
        for c in metrics.class_confusion(labels, probabilities, num_classes=4)
    )
    keras_iou = tf.keras.metrics.IoU(num_classes=4, target_class_ids=[1, 2, 3])
    valid = labels[..., 0] != 255
    keras_iou.update_state(
        np.where(valid, labels[..., 0], 0), np.argmax(probabilities, axis=-1), sample_weight=valid
    )
    scores = metrics.scores_from_sums(tp, fp, fn, metrics.class_names_for(4))
    assert scores["iou"] == pytest.approx(float(keras_iou.result()), rel=1e-6)


@pytest.mark.parametrize(
    "labels_shape, probabilities_shape",
    [((1, 3, 3), (1, 3, 3, 3)), ((1, 3, 3, 1), (1, 3, 3, 2)), ((1, 3, 4, 1), (1, 3, 3, 3))],
)
def test_class_confusion_rejects_bad_shapes(labels_shape, probabilities_shape):
    with pytest.raises(ValueError, match="class indices"):
        metrics.class_confusion(
            np.zeros(labels_shape, np.float32),
            np.zeros(probabilities_shape, np.float32),
            num_classes=3,
        )


def test_scores_from_sums_binary_is_iou_and_fscore_of_the_class():
    for counts in ((2, 2, 1), (0, 0, 0), (0, 3, 4)):
        scores = metrics.scores_from_sums(*([c] for c in counts), ["cat"])
        expected = {
            "iou": metrics.iou_from_sums(*counts),
            "fscore": metrics.fscore_from_sums(*counts),
        }
        assert scores == {**expected, "per_class": {"cat": expected}}


def test_scores_from_sums_hand_values_3_classes():
    # COUNTS_3X3: background 2/4 and 4/6; class 1 IoU 2/3, F1 4/5; class 2 IoU 1/4, F1 2/5.
    tp, fp, fn = (np.asarray(c, np.int32) for c in COUNTS_3X3)
    scores = metrics.scores_from_sums(tp, fp, fn, ("background", "a", "b"))
    assert scores["iou"] == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert scores["fscore"] == pytest.approx((4 / 5 + 2 / 5) / 2)
    assert scores["per_class"] == {
        "background": {"iou": pytest.approx(2 / 4), "fscore": pytest.approx(4 / 6)},
        "a": {"iou": pytest.approx(2 / 3), "fscore": pytest.approx(4 / 5)},
        "b": {"iou": pytest.approx(1 / 4), "fscore": pytest.approx(2 / 5)},
    }
    values = [v for per_class in scores["per_class"].values() for v in per_class.values()]
    assert all(type(v) is float for v in [scores["iou"], scores["fscore"], *values])


def test_scores_from_sums_leaves_absent_classes_out():
    # Class 2 neither in truth nor predicted: the mean is class 1's alone.
    scores = metrics.scores_from_sums([5, 2, 0], [1, 0, 0], [1, 2, 0], ["bg", "a", "b"])
    assert scores["iou"] == pytest.approx(2 / 4) and scores["fscore"] == pytest.approx(4 / 6)
    assert scores["per_class"]["b"] == {"iou": 1.0, "fscore": 1.0}
    # Only background in sight: nothing to find, nothing found.
    scores = metrics.scores_from_sums([9, 0, 0], [0, 0, 0], [0, 0, 0], ["bg", "a", "b"])
    assert (scores["iou"], scores["fscore"]) == (1.0, 1.0)
    # Big host-side sums are fine.
    scores = metrics.scores_from_sums([0, 2**40], [0, 2**40], [0, 0], ["bg", "a"])
    assert scores["iou"] == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    "counts, names, message",
    [
        (([1, 2], [0, 0], [0, 0]), ["bg"], "same, non-zero length"),
        (([1, 2], [0], [0, 0]), ["bg", "a"], "same, non-zero length"),
        (([], [], []), [], "same, non-zero length"),
        (([1, 2], [0, 0], [0, 0]), ["a", "a"], "distinct"),
        (([1, 2], [0, -1], [0, 0]), ["bg", "a"], "non-negative"),
    ],
)
def test_scores_from_sums_rejects_bad_arguments(counts, names, message):
    with pytest.raises(ValueError, match=message):
        metrics.scores_from_sums(*counts, names)


def test_class_names_for():
    assert metrics.class_names_for(1) == ("foreground",)
    assert metrics.class_names_for(1, ["scratch"]) == ("scratch",)
    assert metrics.class_names_for(3) == ("background", "class_1", "class_2")
    assert metrics.class_names_for(3, ("bg", "cat", "dog")) == ("bg", "cat", "dog")
    for num_classes, names in ((1, ["a", "b"]), (3, ["bg", "cat"]), (2, ["a", "b", "c"])):
        with pytest.raises(ValueError, match="must name each"):
            metrics.class_names_for(num_classes, names)
    with pytest.raises(ValueError, match="distinct"):
        metrics.class_names_for(2, ["a", "a"])
    with pytest.raises(ValueError, match="at least 1"):
        metrics.class_names_for(0)
