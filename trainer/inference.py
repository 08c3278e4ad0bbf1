"""A trained model loaded for inference, from a work directory or a SavedModel export.

`load_trained_model` gives evaluate, predict and export one interface over
  - a work directory: the network rebuilt in float32 from its config.json, with
    the best validation weights (WORKDIR/best/), else the latest checkpoint;
  - an export (trainer.serving): its `serve_images` signature (`serve_squares`
    for a model trained on squares cut from photos, `data.resize=crop`).
"""

import dataclasses
import os
from collections.abc import Callable

from trainer import best as best_lib
from trainer import classes, serving
from trainer import workdir as workdir_lib
from trainer.data import decode
from trainer.errors import UserError

import ml_collections
import tensorflow as tf
from absl import logging

WORKDIR = "workdir"
EXPORT = "export"


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained network, from a work directory or an export, ready for inference.

    Attributes:
        predict: uint8 images `[b, s, s, 3]` at the model's size -> float32
            probabilities `[b, s, s, C]` (C = 1 when binary, else the K classes);
            callable inside `tf.function` and `strategy.run`.
        image_size: s, the model's input side in px.
        path: the work directory or export given.
        kind: 'workdir' or 'export'.
        config: a work directory's config.json (None for an export).
        keras_model: the rebuilt network of a work directory (None for an export).
        handle: the loaded SavedModel, kept alive for `predict` (None for a work directory).
        threshold: the probability above which a pixel is foreground: an
            export's chosen one (`trainer.export --threshold`), 0.5 for a work
            directory.
        resize: how a photo becomes the model's square (`data.resize`).
        crop_side_px: under `resize="crop"`, the short side photos are scaled
            to before squares are cut (`decode.crop_side`); 0 otherwise.
        task: the classes (count, names, ignore label); binary for runs and
            exports made before several classes existed.
    """

    predict: Callable[[tf.Tensor], tf.Tensor]
    image_size: int
    path: str
    kind: str
    config: dict | None = None
    keras_model: tf.keras.Model | None = None
    handle: object = None
    threshold: float = serving.DEFAULT_THRESHOLD
    resize: str = "stretch"
    task: classes.Task = classes.BINARY
    crop_side_px: int = 0


def model_kind(path: str) -> str:
    """'workdir' (has config.json) or 'export' (has saved_model.pb).

    Raises:
        UserError: `path` is missing, or is neither.
    """
    if not tf.io.gfile.exists(path):
        raise UserError(
            f"--model={path} does not exist; give a training work directory or an export"
        )
    if tf.io.gfile.exists(os.path.join(path, workdir_lib.CONFIG_FILE)):
        return WORKDIR
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return EXPORT
    raise UserError(
        f"--model={path} is neither a work directory (no config.json) nor a SavedModel "
        "export (no saved_model.pb); give the --workdir of a training run or its export/"
    )


def load_trained_model(path: str) -> TrainedModel:
    """Loads a work directory's best weights, or an export; call inside `strategy.scope()`.

    A work directory's network is rebuilt from its config.json in float32 and
    gets the best validation weights (WORKDIR/best/), or the latest checkpoint
    when no evaluation has saved any.

    Args:
        path: a work directory or an export folder (any `tf.io.gfile` path).

    Raises:
        UserError: `path` is neither, has no weights, or is an export of an older format.
    """
    if model_kind(path) == WORKDIR:
        return _load_workdir(path)
    return _load_export(path)


def _load_workdir(workdir: str) -> TrainedModel:
    # Imported here: segmentation_models is slow to import, and exports do without it.
    from trainer import model as model_lib

    config = workdir_lib.read_json(os.path.join(workdir, workdir_lib.CONFIG_FILE))
    model_config = ml_collections.ConfigDict(config["model"])
    # Inference needs no replica synchronisation and no encoder download: the
    # trained weights replace the encoder's.
    model_config.sync_batchnorm = False
    model_config.encoder_weights = "none"
    image_size = int(config["data"]["image_size"])
    # float32 whatever the run trained in (and whatever policy the caller has set).
    policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("float32")
    try:
        model = model_lib.build_model(model_config, image_size=image_size)
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    record = best_lib.load_best_weights(workdir, model)
    if record is not None:
        logging.info("Loaded the best weights of %s (step %d)", workdir, record["step"])
    else:
        latest = tf.train.latest_checkpoint(os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR))
        if latest is None:
            raise UserError(
                f"work directory {workdir} holds no trained weights (no best/ nor checkpoints/); "
                "train it first"
            )
        tf.train.Checkpoint(model=model).restore(latest).expect_partial()
        logging.info("No best weights in %s; loaded the latest checkpoint %s", workdir, latest)

    def predict(images):
        return serving.model_probabilities(model, images)

    resize = config["data"].get("resize", "stretch")  # runs before data.resize stretched
    return TrainedModel(
        predict,
        image_size,
        workdir,
        WORKDIR,
        config=config,
        keras_model=model,
        resize=resize,
        task=classes.task(config),
        crop_side_px=decode.crop_side_of(config["data"]),
    )


def _load_export(directory: str) -> TrainedModel:
    metadata_path = os.path.join(directory, serving.METADATA_FILE)
    if not tf.io.gfile.exists(metadata_path):
        raise UserError(
            f"export {directory} has no {serving.METADATA_FILE}: it predates the serve_images "
            "signature; export it again with python -m trainer.export --model=WORKDIR"
        )
    metadata = workdir_lib.read_json(metadata_path)
    image_size = int(metadata["image_size"])
    # Exports made before thresholds were stored used 0.5.
    threshold = float(metadata.get("threshold", serving.DEFAULT_THRESHOLD))
    loaded = tf.saved_model.load(directory)
    resize = metadata.get("resize", "stretch")
    # `predict` takes the model's squares: under crop, a photo's squares go to
    # the network alone (serve_images would scale and tile them once more).
    name = serving.SQUARES_SIGNATURE if resize == "crop" else serving.IMAGES_SIGNATURE
    signature = loaded.signatures[name]

    def predict(images):
        return signature(images=images)["probabilities"]

    logging.info("Loaded the SavedModel %s (%d px, threshold %g)", directory, image_size, threshold)
    return TrainedModel(
        predict,
        image_size,
        directory,
        EXPORT,
        handle=loaded,
        threshold=threshold,
        resize=resize,
        task=serving.task_of(metadata),
        crop_side_px=int(metadata.get("crop_side", 0)),
    )
