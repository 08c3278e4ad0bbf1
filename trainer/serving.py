"""The trained network as a service: SavedModel export, and loading it back for inference.

An export (`WORKDIR/export`, or `python -m trainer.export`) is a SavedModel with
two signatures, both returning probabilities of the foreground at each image's
ORIGINAL size, so that TensorFlow Serving and other clients need no
preprocessing of their own:

  serving_default  image_bytes: string [batch] (encoded PNG, JPEG, BMP or GIF)
                   -> probabilities: float32 [batch, max_height, max_width, 1],
                      height, width: int32 [batch]
                   Images of different sizes may share a batch: image i's
                   probabilities are `probabilities[i, :height[i], :width[i]]`,
                   the rest is zero padding (none when all sizes are equal).
  serve_images     images: uint8 [batch, height, width, 3], any height and width
                   -> probabilities: float32 [batch, height, width, 1]

Inside the graph an image is resized to the model's square input as training
resized it (antialiased bilinear, rounded to uint8), divided by 255, and the
probabilities are resized back (bilinear). `assets.extra/trainer.json` records
the model's input size; TensorFlow Serving ignores that folder.

`load_trained_model` gives one inference interface over a work directory
(the network rebuilt from config.json, best weights) or an export.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Callable

from trainer.data import pipeline
from trainer.errors import UserError

import ml_collections
import tensorflow as tf
from absl import logging

METADATA_FILE = os.path.join("assets.extra", "trainer.json")
DEFAULT_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serve_images"


# ---------------------------------------------------------------- graph pieces


def resize_probabilities(probabilities: tf.Tensor, height, width) -> tf.Tensor:
    """Resizes probabilities `[..., s, s, 1]` back to `[..., height, width, 1]` (bilinear)."""
    return tf.image.resize(probabilities, tf.stack([height, width]), antialias=True)


def _model_probabilities(model: tf.keras.Model, images: tf.Tensor) -> tf.Tensor:
    """uint8 images at the model's size -> float32 probabilities `[b, s, s, 1]`."""
    inputs = tf.cast(images, tf.float32) / 255.0
    # A mixed-precision model computes in float16; clients get float32.
    return tf.cast(model(inputs, training=False), tf.float32)


def make_signatures(model: tf.keras.Model) -> dict:
    """The `serving_default` and `serve_images` functions of an export (module docstring)."""
    size_px = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(images):
        shape = tf.shape(images)
        probabilities = _model_probabilities(model, pipeline.resize_image(images, size_px))
        return {"probabilities": resize_probabilities(probabilities, shape[1], shape[2])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_encoded(image_bytes):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return pipeline.resize_image(image, size_px), tf.shape(image)[:2]

        # Photos of different sizes cannot be stacked: each is decoded and resized
        # to the model's size alone, the network runs on the stacked batch, and
        # each result goes back to its photo's size, zero-padded to the largest.
        resized, sizes = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=(
                tf.TensorSpec([size_px, size_px, 3], tf.uint8),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        probabilities = _model_probabilities(model, resized)
        max_size = tf.reduce_max(sizes, axis=0)

        def restore(args):
            one, size = args
            one = resize_probabilities(one, size[0], size[1])
            return tf.pad(one, [[0, max_size[0] - size[0]], [0, max_size[1] - size[1]], [0, 0]])

        restored = tf.map_fn(
            restore,
            (probabilities, sizes),
            fn_output_signature=tf.TensorSpec([None, None, 1], tf.float32),
        )
        return {"probabilities": restored, "height": sizes[:, 0], "width": sizes[:, 1]}

    return {DEFAULT_SIGNATURE: serve_encoded, IMAGES_SIGNATURE: serve_images}


# ---------------------------------------------------------------- export


def export_saved_model(model: tf.keras.Model, directory: str) -> str:
    """Writes `model` as a SavedModel at `directory`, replacing what was there.

    The model is written next to `directory` first and renamed into place, so
    a crash while exporting leaves the previous export intact.

    Args:
        model: a network from float images `[b, s, s, 3]` in 0..1 to probabilities.
        directory: the export folder.

    Returns:
        `directory`.
    """
    temporary = directory.rstrip("/") + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    tf.saved_model.save(model, temporary, signatures=make_signatures(model))
    metadata = {
        "image_size": int(model.input_shape[1]),
        "signatures": [DEFAULT_SIGNATURE, IMAGES_SIGNATURE],
    }
    os.makedirs(os.path.join(temporary, os.path.dirname(METADATA_FILE)), exist_ok=True)
    with open(os.path.join(temporary, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    previous = directory.rstrip("/") + ".old"
    if os.path.exists(directory):
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(directory, previous)
    os.replace(temporary, directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


# ---------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained network, from a work directory or an export, ready for inference.

    Attributes:
        predict: uint8 images `[b, s, s, 3]` at the model's size -> float32
            probabilities `[b, s, s, 1]`; callable inside `tf.function` and
            `strategy.run`.
        image_size: s, the model's input side in px.
        path: the work directory or export given.
        kind: 'workdir' or 'export'.
        config: a work directory's config.json (None for an export).
        keras_model: the rebuilt network of a work directory (None for an export).
        handle: the loaded SavedModel, kept alive for `predict` (None for a work directory).
    """

    predict: Callable[[tf.Tensor], tf.Tensor]
    image_size: int
    path: str
    kind: str
    config: dict | None = None
    keras_model: tf.keras.Model | None = None
    handle: object = None


def model_kind(path: str) -> str:
    """'workdir' (has config.json) or 'export' (has saved_model.pb); UserError otherwise."""
    if not os.path.exists(path):
        raise UserError(
            f"--model={path} does not exist; give a training work directory or an export"
        )
    if os.path.isfile(os.path.join(path, "config.json")):
        return "workdir"
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "export"
    raise UserError(
        f"--model={path} is neither a work directory (no config.json) nor a SavedModel "
        "export (no saved_model.pb); give the --workdir of a training run or its export/"
    )


def load_trained_model(path: str) -> TrainedModel:
    """Loads a work directory's best weights, or an export; call inside `strategy.scope()`.

    A work directory's network is rebuilt from its config.json in float32 and
    gets the best validation weights (WORKDIR/best/), or the latest checkpoint
    when no evaluation has saved any.

    Raises:
        UserError: `path` is neither, has no weights, or is an export of an older format.
    """
    kind = model_kind(path)
    if kind == "workdir":
        return _load_workdir(path)
    return _load_export(path)


def _load_workdir(workdir: str) -> TrainedModel:
    from trainer import checkpoint
    from trainer import model as model_lib

    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
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
    record = checkpoint.load_best_weights(workdir, model)
    if record is not None:
        logging.info("Loaded the best weights of %s (step %d)", workdir, record["step"])
    else:
        latest = tf.train.latest_checkpoint(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
        if latest is None:
            raise UserError(
                f"work directory {workdir} holds no trained weights (no best/ nor checkpoints/); "
                "train it first"
            )
        tf.train.Checkpoint(model=model).restore(latest).expect_partial()
        logging.info("No best weights in %s; loaded the latest checkpoint %s", workdir, latest)

    def predict(images):
        return _model_probabilities(model, images)

    return TrainedModel(predict, image_size, workdir, "workdir", config=config, keras_model=model)


def _load_export(directory: str) -> TrainedModel:
    metadata_path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(metadata_path):
        raise UserError(
            f"export {directory} has no {METADATA_FILE}: it predates the serve_images "
            "signature; export it again with python -m trainer.export --model=WORKDIR"
        )
    with open(metadata_path) as f:
        image_size = int(json.load(f)["image_size"])
    loaded = tf.saved_model.load(directory)
    serve_images = loaded.signatures[IMAGES_SIGNATURE]

    def predict(images):
        return serve_images(images=images)["probabilities"]

    logging.info("Loaded the SavedModel %s (%d px)", directory, image_size)
    return TrainedModel(predict, image_size, directory, "export", handle=loaded)
