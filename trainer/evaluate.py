r"""Evaluates a trained model on a data set: exact IoU / F1 overall, per group and per image.

    python -m trainer.evaluate --model=runs/demo --data_root=data/synthetic
    python -m trainer.evaluate --model=runs/demo/export --data_root=data/synthetic \
        --split=all --strategy=mirrored --num_cpu_devices=2

--model is a work directory (the network rebuilt from its config.json with the
best validation weights, else the latest checkpoint) or a SavedModel export
(its `serve_images` signature). Images are resized to the model's input size,
as validation resizes them. With --resolution=photo (the default) the
probabilities are then resized back to each photo's own size, as predict
delivers them, and every pixel of the mask at its own size is counted;
--resolution=model counts at the model's size instead, as the validation
during training does (faster, and what metrics.jsonl's figures are).

Writes to --output_dir (default WORKDIR/eval, or EXPORT_eval next to an export):

  summary.json   iou, fscore (from tp/fp/fn summed over the images), tp, fp, fn,
                 at threshold 0.5; mean_image_iou, iou_at_threshold (0.1 ...
                 0.9), best_threshold (the one of those with the highest iou:
                 choose it on photos held out of training, then
                 `trainer.export --threshold=best` stores it with the model),
                 resolution, mean_iou, per_class: {name: {iou, fscore}},
                 groups: {name: {iou, fscore, mean_image_iou, num_images}}
  per_image.csv  path, group, iou, fscore, predicted_area, true_area (pixels),
                 worst IoU first

With several classes (`model.num_classes` K >= 2) the predicted class is the
argmax, so there are no thresholds (iou_at_threshold and best_threshold are
absent); iou, fscore and mean_iou are means over the foreground classes 1..K-1
(a class absent from both masks and predictions left out), tp / fp / fn are
lists with one count per class, ignored pixels (`data.ignore_label`) count
nowhere, and per_image.csv adds `iou/NAME` for each class; the areas are those
of all foreground classes together.

Counts are exact integer sums, gathered per image from every replica and
padding excluded, so one device and several give the same figures (batch
sizes aside, whose float rounding in the network may flip a rare pixel).

A model trained on squares cut from photos (`data.resize=crop`) is evaluated
as predict and the export use it: each photo alone, as overlapping squares of
it scaled whose probabilities are blended (`trainer.tiling`); the squares of a
photo are one batch, not spread over replicas. --resolution=model then
counts at the scaled photo's size.
"""

import os

from trainer import classes, cli, distribute, inference, serving, tiling
from trainer import workdir as workdir_lib
from trainer.data import decode, layout, manifest, pipeline, records
from trainer.errors import UserError

import ml_collections
import numpy as np
import pandas as pd
import tensorflow as tf
from absl import app, flags, logging

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
THRESHOLD = 0.5  # the training metrics' threshold, for iou / fscore / per_image.csv
_AT_THRESHOLD = THRESHOLDS.index(THRESHOLD)
SPLITS = ("train", "valid", "all")
RESOLUTIONS = ("photo", "model")
DEFAULT_PER_REPLICA_BATCH_SIZE = 8

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags; called by the entry point only.

    Importing this module beside the other entry points then defines no flag twice.
    """
    flags.DEFINE_string("model", None, "A training work directory, or a SavedModel export.")
    flags.DEFINE_string("data_root", None, "Data set folder; its manifests choose the images.")
    flags.DEFINE_string("output_dir", None, "Where to write; default WORKDIR/eval or EXPORT_eval.")
    flags.DEFINE_enum("split", "valid", SPLITS, "Which manifest's images to evaluate.")
    flags.DEFINE_enum(
        "resolution",
        "photo",
        RESOLUTIONS,
        "Count pixels at each photo's own size (as predict delivers masks) or at the model's "
        "input size (as training's validation; faster).",
    )
    cli.define_distribution_flags(("one_device", "mirrored"))
    flags.DEFINE_integer(
        "batch_size", 0, f"Global batch size; 0 = {DEFAULT_PER_REPLICA_BATCH_SIZE} per replica."
    )
    flags.mark_flags_as_required(["model", "data_root"])


def select_rows(
    data_root: str,
    split: str,
    *,
    fallback_dir: str | None,
    task: classes.Task = classes.BINARY,
) -> pd.DataFrame:
    """The manifest rows of `split` ('train', 'valid' or 'all'), with a fresh index.

    Raises:
        UserError: `data_root` is a records folder: per-image results name each
            photo and count its mask at its own size, so they read the photos' folder.
    """
    if records.is_records_root(data_root):
        raise records.not_a_folder_of_photos(data_root, "evaluate")
    train, valid = manifest.read_manifests(
        data_root,
        fallback_dir=fallback_dir,
        num_classes=task.num_classes,
        ignore_label=classes.DEFAULT_IGNORE_LABEL
        if task.ignore_label is None
        else task.ignore_label,
    )
    chosen = {"train": [train], "valid": [valid], "all": [train, valid]}[split]
    return pd.concat(chosen, ignore_index=True)


def count_confusions(
    trained: inference.TrainedModel,
    rows: pd.DataFrame,
    strategy: tf.distribute.Strategy,
    *,
    global_batch_size: int,
    resolution: str = "photo",
) -> np.ndarray:
    """Runs the model over `rows` and counts each image's pixels at each threshold.

    Args:
        trained: the model, loaded under `strategy.scope()`.
        rows: manifest rows (images, masks).
        strategy: a single-host strategy.
        global_batch_size: images per step, a multiple of the replica count.
        resolution: 'photo' (probabilities resized to each mask's own size) or
            'model' (the mask resized to the model's size).

    Returns:
        int64 `[len(rows), T, C, 3]`: tp, fp, fn of each image (in row order), at
        each of the T thresholds (`thresholds(task)`) and for each of the C
        channels (1 when binary, else the K classes).
    """
    task = trained.task
    if trained.resize == "crop":
        return _cropped_confusions(trained, rows, resolution)
    data_config = ml_collections.ConfigDict(
        {
            "image_size": trained.image_size,
            "resize": trained.resize,
            "batch_size": global_batch_size,
            "balanced": False,
            "augment": False,
            "num_parallel_calls": 0,
            "prefetch_batches": 0,
        }
    )

    def dataset_fn(input_context):
        dataset = pipeline.make_dataset(
            rows,
            data_config,
            input_context,
            training=False,
            with_weights=True,
            num_classes=task.num_classes,
        )
        # The row index travels with each example, so results map back to rows
        # however the batches were spread over replicas.
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        first, stride = input_context.input_pipeline_id, input_context.num_input_pipelines
        indices = tf.data.Dataset.range(first, np.iinfo(np.int64).max, stride).batch(per_replica)
        return tf.data.Dataset.zip((dataset, indices)).map(lambda batch, index: (*batch, index))

    def replica_step(images, masks, weights, indices):
        # Validation images are uint8 / 255, so this recovers the uint8 exactly.
        probabilities = trained.predict(tf.cast(tf.round(images * 255.0), tf.uint8))
        if resolution == "photo":
            return indices, weights, probabilities
        return indices, weights, _confusions(masks, probabilities, task)

    @tf.function
    def step(batch):
        return strategy.run(replica_step, args=batch)

    mask_paths = rows["masks"].astype(str).to_numpy()
    photo_confusions = _photo_confusions_fn(trained.resize, task)
    counts = np.zeros([len(rows), len(thresholds(task)), task.num_channels, 3], np.int64)
    times_seen = np.zeros(len(rows), np.int64)
    for batch in strategy.distribute_datasets_from_function(dataset_fn):
        outputs = [strategy.experimental_local_results(x) for x in step(batch)]
        for indices, weights, replica_results in zip(*outputs):
            real = weights.numpy() > 0
            indices = indices.numpy()[real]
            if resolution == "photo":
                for index, probabilities in zip(indices, tf.boolean_mask(replica_results, real)):
                    counts[index] = photo_confusions(probabilities, mask_paths[index]).numpy()
            else:
                counts[indices] = replica_results.numpy()[real]
            np.add.at(times_seen, indices, 1)  # counts repeats within a batch too
    if not np.all(times_seen == 1):
        raise RuntimeError(f"evaluation saw images {times_seen.tolist()} times, not once each")
    return counts


def _cropped_confusions(
    trained: inference.TrainedModel, rows: pd.DataFrame, resolution: str
) -> np.ndarray:
    """`count_confusions` of a model trained on squares of photos (`data.resize=crop`).

    Each photo is predicted alone, as predict and the export do: overlapping
    squares of it scaled, blended (`serving.crop_probabilities`). At 'model'
    resolution the counts are at the scaled photo's size, the mask resized to it.
    """
    task = trained.task
    size_px, crop_side_px = trained.image_size, trained.crop_side_px

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)] * 2)
    def photo_confusions(image_path, mask_path):
        image = decode.decode_image_for_model(tf.io.read_file(image_path), crop_side_px)
        mask = decode.decode_mask(mask_path, task.num_classes)
        if resolution == "photo":
            size = tf.shape(mask)
            probabilities = serving.crop_probabilities(
                trained.predict, image, size_px, crop_side_px, size[0], size[1]
            )
        else:
            scaled = decode.scale_image(image, crop_side_px)
            probabilities = tiling.tiled_probabilities(trained.predict, scaled, size_px)
            mask = decode.resize_mask(mask, tf.shape(scaled)[:2], task.num_classes)
        return _confusions(tf.cast(mask, tf.float32)[None], probabilities[None], task)[0]

    counts = np.zeros([len(rows), len(thresholds(task)), task.num_channels, 3], np.int64)
    paths = zip(rows["images"].astype(str), rows["masks"].astype(str))
    for index, (image_path, mask_path) in enumerate(paths):
        counts[index] = photo_confusions(image_path, mask_path).numpy()
    return counts


def thresholds(task: classes.Task) -> tuple:
    """The thresholds counted: THRESHOLDS when binary; one argmax (None) for several classes."""
    return THRESHOLDS if task.is_binary else (None,)


def _at_threshold(task: classes.Task) -> int:
    """The index in `thresholds(task)` of the figures reported (0.5; the argmax)."""
    return _AT_THRESHOLD if task.is_binary else 0


def _confusions(masks: tf.Tensor, probabilities: tf.Tensor, task: classes.Task) -> tf.Tensor:
    """int64 `[b, T, C, 3]`: tp, fp, fn of each example at each threshold, per channel."""
    counts = [
        tf.stack(task.confusion(masks, probabilities, threshold or 0.5), axis=-1)
        for threshold in thresholds(task)
    ]
    return tf.cast(tf.stack(counts, axis=1), tf.int64)


def _photo_confusions_fn(resize: str, task: classes.Task):
    """`(probabilities [s, s, C], mask path) -> [T, C, 3]` at the mask's own size."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, task.num_channels], tf.float32),
            tf.TensorSpec([], tf.string),
        ]
    )
    def photo_confusions(probabilities, mask_path):
        mask = decode.decode_mask(mask_path, task.num_classes)
        size = tf.shape(mask)
        at_photo_size = serving.resize_probabilities(probabilities, size[0], size[1], resize)
        return _confusions(tf.cast(mask, tf.float32)[None], at_photo_size[None], task)[0]

    return photo_confusions


def _image_scores(task: classes.Task, counts: np.ndarray) -> list[dict]:
    """`task.scores` of each image's counts `[C, 3]`."""
    return [task.scores(*(c[:, k].tolist() for k in range(3))) for c in counts]


def per_image_table(
    rows: pd.DataFrame, counts: np.ndarray, task: classes.Task = classes.BINARY
) -> pd.DataFrame:
    """One row per image at threshold 0.5 (or the argmax), worst IoU first (ties by path)."""
    reported = counts[:, _at_threshold(task)]  # [images, C, 3]
    scores = _image_scores(task, reported)
    foreground = reported if task.is_binary else reported[:, 1:]
    tp, fp, fn = (foreground[..., k].sum(axis=1) for k in range(3))
    columns = {
        "path": rows["images"].astype(str).to_numpy(),
        "group": rows["group"].astype(str).to_numpy(),
        "iou": [s["iou"] for s in scores],
        "fscore": [s["fscore"] for s in scores],
        "predicted_area": tp + fp,
        "true_area": tp + fn,
    }
    if not task.is_binary:
        for name in task.names:
            columns[f"iou/{name}"] = [s["per_class"][name]["iou"] for s in scores]
    table = pd.DataFrame(columns)
    return table.sort_values(["iou", "path"], ignore_index=True)


def _summed(counts: np.ndarray, at: int) -> list[list[int]]:
    """[tp, fp, fn], each a list over the C channels, summed over the images."""
    totals = counts[:, at].sum(axis=0)  # [C, 3]
    return [[int(v) for v in totals[:, k]] for k in range(3)]


def _scores(task: classes.Task, counts: np.ndarray) -> dict:
    """iou, fscore, mean_image_iou and num_images of some images' counts at 0.5."""
    scores = task.scores(*_summed(counts, _at_threshold(task)))
    image_ious = [s["iou"] for s in _image_scores(task, counts[:, _at_threshold(task)])]
    return {
        "iou": scores["iou"],
        "fscore": scores["fscore"],
        "mean_image_iou": float(np.mean(image_ious)),
        "num_images": len(counts),
    }


def summarize(rows: pd.DataFrame, counts: np.ndarray, task: classes.Task = classes.BINARY) -> dict:
    """The summary.json figures (module docstring) of `count_confusions`' counts."""
    summary = _scores(task, counts)
    tp, fp, fn = _summed(counts, _at_threshold(task))
    overall = task.scores(tp, fp, fn)
    summary.update(mean_iou=overall["iou"], per_class=overall["per_class"])
    if task.is_binary:
        summary.update(tp=tp[0], fp=fp[0], fn=fn[0], threshold=THRESHOLD)
        by_threshold = {
            f"{t:.1f}": task.scores(*_summed(counts, i))["iou"] for i, t in enumerate(THRESHOLDS)
        }
        summary["iou_at_threshold"] = by_threshold
        summary["best_threshold"] = float(max(by_threshold, key=by_threshold.get))
    else:
        summary.update(tp=tp, fp=fp, fn=fn, class_names=list(task.names))
    groups = rows["group"].astype(str).to_numpy()
    summary["groups"] = {
        name: _scores(task, counts[groups == name]) for name in sorted(set(groups), key=_natural)
    }
    return summary


def _natural(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def default_output_dir(trained: inference.TrainedModel) -> str:
    """WORKDIR/eval for a work directory, EXPORT_eval beside an export."""
    if trained.kind == inference.WORKDIR:
        return os.path.join(trained.path, workdir_lib.EVAL_DIR)
    return os.path.normpath(trained.path) + "_eval"


def write_results(output_dir: str, summary: dict, table: pd.DataFrame) -> None:
    """Writes summary.json and per_image.csv (each replaced atomically)."""
    workdir_lib.write_json(os.path.join(output_dir, workdir_lib.EVAL_SUMMARY_FILE), summary)
    workdir_lib.write_text(
        os.path.join(output_dir, workdir_lib.EVAL_PER_IMAGE_FILE),
        table.to_csv(index=False, float_format="%.6f"),
    )


def _global_batch_size(requested: int, num_replicas: int) -> int:
    if requested <= 0:
        return DEFAULT_PER_REPLICA_BATCH_SIZE * num_replicas
    if requested % num_replicas:
        raise UserError(
            f"--batch_size={requested} does not divide over {num_replicas} replicas; "
            f"use a multiple of {num_replicas}"
        )
    return requested


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    distribute.configure_cpu_devices(FLAGS.num_cpu_devices)
    strategy = distribute.make_strategy(FLAGS.strategy)
    distribute.describe(strategy)
    global_batch_size = _global_batch_size(FLAGS.batch_size, strategy.num_replicas_in_sync)
    inference.model_kind(FLAGS.model)  # a wrong path fails before any slow work
    with strategy.scope():
        trained = inference.load_trained_model(FLAGS.model)
    output_dir = FLAGS.output_dir or default_output_dir(trained)
    with workdir_lib.writing(output_dir, what="the evaluation results"):
        tf.io.gfile.makedirs(output_dir)
    fallback_dir = trained.path if trained.kind == inference.WORKDIR else output_dir
    task = trained.task
    rows = select_rows(FLAGS.data_root, FLAGS.split, fallback_dir=fallback_dir, task=task)
    logging.info("Evaluating %s on %d %s images", trained.path, len(rows), FLAGS.split)

    counts = count_confusions(
        trained,
        rows,
        strategy,
        global_batch_size=global_batch_size,
        resolution=FLAGS.resolution,
    )
    summary = summarize(rows, counts, task)
    summary.update(model=str(layout.absolute(trained.path)), split=FLAGS.split)
    summary.update(resolution=FLAGS.resolution)
    summary.update(data_root=str(layout.absolute(FLAGS.data_root)))
    summary.update(image_size=trained.image_size)
    write_results(output_dir, summary, per_image_table(rows, counts, task))

    for name, scores in summary["groups"].items():
        logging.info(
            "group %s: IoU %.4f F1 %.4f mean image IoU %.4f (%d images)",
            name,
            scores["iou"],
            scores["fscore"],
            scores["mean_image_iou"],
            scores["num_images"],
        )
    if not task.is_binary:
        for name, scores in summary["per_class"].items():
            logging.info("class %s: IoU %.4f F1 %.4f", name, scores["iou"], scores["fscore"])
    chosen = (
        f"best threshold {summary['best_threshold']}"
        if task.is_binary
        else f"mean over {task.num_classes - 1} foreground classes"
    )
    print(
        f"{FLAGS.split}: IoU {summary['iou']:.4f} F1 {summary['fscore']:.4f} on "
        f"{summary['num_images']} images at {FLAGS.resolution} resolution ({chosen}); "
        f"results in {output_dir}",
        flush=True,
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
