"""The trained network as a service: the SavedModel export and its signatures.

An export (`WORKDIR/export`, or `python -m trainer.export`) is a SavedModel with
two signatures, both returning probabilities of the foreground at each image's
ORIGINAL size, and the mask at the export's threshold, so that TensorFlow
Serving and other clients need no preprocessing of their own:

  serving_default  image_bytes: string [batch] (encoded PNG, JPEG, BMP or GIF)
                   -> probabilities: float32 [batch, max_height, max_width, 1],
                      mask: uint8 [batch, max_height, max_width, 1], 1 where
                      the probability is above the threshold,
                      height, width: int32 [batch]
                   Images of different sizes may share a batch: image i's
                   probabilities are `probabilities[i, :height[i], :width[i]]`,
                   the rest is zero padding (none when all sizes are equal).
                   A JPEG's EXIF orientation is applied first, as everywhere
                   in the trainer: sizes and probabilities are in the upright
                   frame the photo is shown in (height and width swapped for
                   orientations 5-8).
  serve_images     images: uint8 [batch, height, width, 3], any height and width
                   -> probabilities: float32 [batch, height, width, 1],
                      mask: uint8 [batch, height, width, 1]

Inside the graph an image is resized to the model's square input as training
resized it (zero-padded to a square first under `data.resize=pad`; area or
antialiased bilinear, rounded to uint8), divided by 255, and the probabilities
are resized back (bilinear; the padding cut off). `assets.extra/trainer.json` records
the model's input size and the threshold (`trainer.export --threshold`, 0.5
unless chosen); TensorFlow Serving ignores that folder.

Loading a work directory or an export back for inference is `trainer.inference`.
"""

import os

from trainer import workdir as workdir_lib
from trainer.data import decode

import tensorflow as tf

METADATA_FILE = os.path.join("assets.extra", "trainer.json")
DEFAULT_SIGNATURE = "serving_default"
DEFAULT_THRESHOLD = 0.5
IMAGES_SIGNATURE = "serve_images"


# ---------------------------------------------------------------- graph pieces


def resize_probabilities(probabilities: tf.Tensor, height, width, resize="stretch") -> tf.Tensor:
    """Brings probabilities `[..., s, s, 1]` back to their photo's `[..., height, width, 1]`.

    Bilinear; with `resize="pad"` (`decode.RESIZE_MODES`) the square is resized
    to the photo's long side and the padding cut off.
    """
    if resize != "pad":
        return tf.image.resize(probabilities, tf.stack([height, width]), antialias=True)
    side = tf.maximum(height, width)
    square = tf.image.resize(probabilities, tf.stack([side, side]), antialias=True)
    return square[..., :height, :width, :]


def model_probabilities(model: tf.keras.Model, images: tf.Tensor) -> tf.Tensor:
    """uint8 images `[b, s, s, 3]` at the model's size -> float32 probabilities `[b, s, s, 1]`."""
    inputs = tf.cast(images, tf.float32) / 255.0
    # A mixed-precision model computes in float16; clients get float32.
    return tf.cast(model(inputs, training=False), tf.float32)


def make_signatures(
    model: tf.keras.Model, threshold: float = DEFAULT_THRESHOLD, resize: str = "stretch"
) -> dict:
    """The `serving_default` and `serve_images` functions of an export (module docstring)."""
    size_px = model.input_shape[1]

    def with_mask(outputs):
        return {**outputs, "mask": tf.cast(outputs["probabilities"] > threshold, tf.uint8)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(images):
        shape = tf.shape(images)
        square = decode.to_model_square(images, size_px, resize)
        probabilities = model_probabilities(model, square)
        restored = resize_probabilities(probabilities, shape[1], shape[2], resize)
        return with_mask({"probabilities": restored})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_encoded(image_bytes):
        def decode_one(data):
            # Upright (EXIF orientation); a large JPEG decoded reduced, as in training.
            image = decode.decode_image_for_model(data, size_px)
            return decode.to_model_square(image, size_px, resize), decode.upright_size(data, image)

        # Photos of different sizes cannot be stacked: each is decoded and resized
        # to the model's size alone, the network runs on the stacked batch, and
        # each result goes back to its photo's size, zero-padded to the largest.
        resized, sizes = tf.map_fn(
            decode_one,
            image_bytes,
            fn_output_signature=(
                tf.TensorSpec([size_px, size_px, 3], tf.uint8),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        probabilities = model_probabilities(model, resized)
        max_size = tf.reduce_max(sizes, axis=0)

        def restore(args):
            one, size = args
            one = resize_probabilities(one, size[0], size[1], resize)
            return tf.pad(one, [[0, max_size[0] - size[0]], [0, max_size[1] - size[1]], [0, 0]])

        restored = tf.map_fn(
            restore,
            (probabilities, sizes),
            fn_output_signature=tf.TensorSpec([None, None, 1], tf.float32),
        )
        return with_mask({"probabilities": restored, "height": sizes[:, 0], "width": sizes[:, 1]})

    return {DEFAULT_SIGNATURE: serve_encoded, IMAGES_SIGNATURE: serve_images}


# ---------------------------------------------------------------- export


def export_saved_model(
    model: tf.keras.Model,
    directory: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    resize: str = "stretch",
) -> str:
    """Writes `model` as a SavedModel at `directory`, replacing what was there.

    The model is written next to `directory` first and renamed into place, so
    a crash while exporting leaves the previous export intact.

    Args:
        model: a network from float images `[b, s, s, 3]` in 0..1 to probabilities.
        directory: the export folder (any `tf.io.gfile` path).
        threshold: the probability above which a pixel is foreground, in the
            `mask` outputs and the metadata predict reads.
        resize: how the model was trained to see a photo (`data.resize`).

    Returns:
        `directory`.

    Raises:
        UserError: the disk is full or the folder cannot be written.
    """
    directory = directory.rstrip("/")
    temporary = workdir_lib.temporary_path(directory)
    with workdir_lib.writing(
        directory,
        what="the SavedModel export",
        needed_bytes=lambda: workdir_lib.variables_bytes(model.weights),
    ):
        try:
            signatures = make_signatures(model, threshold, resize)
            tf.saved_model.save(model, temporary, signatures=signatures)
            metadata = {
                "image_size": int(model.input_shape[1]),
                "threshold": float(threshold),
                "resize": resize,
                "signatures": [DEFAULT_SIGNATURE, IMAGES_SIGNATURE],
            }
            workdir_lib.write_json(os.path.join(temporary, METADATA_FILE), metadata)
            _replace_directory(temporary, directory)
        finally:
            if tf.io.gfile.exists(temporary):
                tf.io.gfile.rmtree(temporary)
    return directory


def _replace_directory(source: str, target: str) -> None:
    """Renames `source` to `target`; a failure puts the previous `target` back."""
    previous = workdir_lib.temporary_path(target)
    if tf.io.gfile.exists(target):
        tf.io.gfile.rename(target, previous)
    try:
        tf.io.gfile.rename(source, target)
    except BaseException:
        if tf.io.gfile.exists(previous):
            tf.io.gfile.rename(previous, target)
        raise
    if tf.io.gfile.exists(previous):
        tf.io.gfile.rmtree(previous)
