"""The trained network as a service: the SavedModel export and its signatures.

An export (`WORKDIR/export`, or `python -m trainer.export`) is a SavedModel
whose signatures return results at each image's ORIGINAL size, so that
TensorFlow Serving and other clients need no preprocessing of their own.

A binary model (`model.num_classes` 1) has two signatures, returning the
probability of the foreground and the mask at the export's threshold:

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

A multi-class model (K >= 2 softmax classes, class 0 the background) has no
threshold: a pixel's class is the argmax of its probabilities, taken after they
are resized back to the photo's size. Its signatures return, in place of
`mask`, the label map `labels` (uint8, 0..K-1; the padding of a batch is 0),
and a third signature returns the labels alone, for clients that need no
probabilities and would otherwise receive 4K bytes a pixel instead of 1:

  serving_default  image_bytes -> probabilities: float32 [batch, max_height, max_width, K],
                                  labels: uint8 [batch, max_height, max_width, 1],
                                  height, width: int32 [batch]
  serve_images     images -> probabilities: float32 [batch, height, width, K],
                             labels: uint8 [batch, height, width, 1]
  serve_labels     image_bytes -> labels, height, width (as serving_default's)

An export of a model trained under `data.resize=crop` adds, whatever its classes:

  serve_squares    images: uint8 [batch, s, s, 3], squares cut from photos
                   scaled as training scaled them (short side `crop_side`)
                   -> probabilities: float32 [batch, s, s, C], the network alone

Inside the graph an image is resized to the model's square input as training
resized it (zero-padded to a square first under `data.resize=pad`; area when
shrinking, bilinear when enlarging, rounded to uint8), divided by 255, and the probabilities
are resized back (bilinear; the padding cut off). Under `data.resize=crop` the
photo is scaled to training's short side instead, the network runs on
overlapping squares of it and their probabilities are blended
(`trainer.tiling`) before they are resized back; the metadata's `crop_side`
records that short side. `assets.extra/trainer.json`
records the model's input size, the resize mode, the signatures, the classes
(`num_classes`, `class_names`, `ignore_label`; `task_of` reads them back) and,
for a binary model, the threshold (`trainer.export --threshold`, 0.5 unless
chosen); TensorFlow Serving ignores that folder.

Loading a work directory or an export back for inference is `trainer.inference`.
"""

import os

from trainer import classes, tiling
from trainer import workdir as workdir_lib
from trainer.data import decode

import tensorflow as tf

METADATA_FILE = os.path.join("assets.extra", "trainer.json")
DEFAULT_SIGNATURE = "serving_default"
DEFAULT_THRESHOLD = 0.5
IMAGES_SIGNATURE = "serve_images"
LABELS_SIGNATURE = "serve_labels"  # multi-class exports only
SQUARES_SIGNATURE = "serve_squares"  # `data.resize=crop` exports only


# ---------------------------------------------------------------- graph pieces


def resize_probabilities(probabilities: tf.Tensor, height, width, resize="stretch") -> tf.Tensor:
    """Brings probabilities `[..., s, s, C]` back to their photo's `[..., height, width, C]`.

    Bilinear; with `resize="pad"` (`decode.RESIZE_MODES`) the square is resized
    to the photo's long side and the padding cut off. Each output pixel is a
    weighted mean of input pixels, so a multi-class model's probabilities still
    sum to 1.
    """
    if resize != "pad":
        return tf.image.resize(probabilities, tf.stack([height, width]), antialias=True)
    side = tf.maximum(height, width)
    square = tf.image.resize(probabilities, tf.stack([side, side]), antialias=True)
    return square[..., :height, :width, :]


def crop_probabilities(predict, image: tf.Tensor, size_px: int, crop_side_px: int, height, width):
    """Probabilities `[height, width, C]` of one photo under `data.resize=crop`.

    The photo is scaled to the short side training scaled it to, the network
    sees overlapping squares of it (`tiling.tiled_probabilities`), and the
    blended probabilities are resized to the photo's `[height, width]`
    (bilinear).

    Args:
        predict: uint8 squares `[n, s, s, 3]` -> float32 probabilities `[n, s, s, C]`.
        image: uint8 `[h, w, 3]`: the photo, possibly decoded reduced.
        size_px: s, the model's side.
        crop_side_px: the short side of training's scaled photos (`decode.crop_side`).
        height, width: the photo's own size.
    """
    scaled = decode.scale_image(image, crop_side_px)
    probabilities = tiling.tiled_probabilities(predict, scaled, size_px)
    return tf.image.resize(probabilities, tf.stack([height, width]), antialias=True)


def model_probabilities(model: tf.keras.Model, images: tf.Tensor) -> tf.Tensor:
    """uint8 images `[b, s, s, 3]` at the model's size -> float32 probabilities `[b, s, s, C]`."""
    return network_probabilities(model, tf.cast(images, tf.float32) / 255.0)


def network_probabilities(model: tf.keras.Model, inputs: tf.Tensor) -> tf.Tensor:
    """float images `[b, s, s, 3]` in 0..1 -> float32 probabilities `[b, s, s, C]`."""
    # A mixed-precision model computes in float16; clients get float32.
    return tf.cast(model(inputs, training=False), tf.float32)


def saved_object(model: tf.keras.Model) -> tf.__internal__.tracking.AutoTrackable:
    """What an export holds besides its signatures: the weights and `__call__`.

    A loaded export has `variables`, `trainable_variables` and `__call__`
    (float images `[b, s, s, 3]` in 0..1 -> float32 probabilities). It is a
    plain trackable, not the Keras model: saving the model itself makes
    tf-keras trace every layer's call for its own loader, which took 3.4x the
    time (63 s against 19 s for the tests' small U-Net, on 2 busy cores), and
    the export is not meant to be loaded back into Keras (`trainer.inference`
    and TensorFlow Serving use the signatures).
    """
    size_px = model.input_shape[1]
    saved = tf.__internal__.tracking.AutoTrackable()
    saved.variables = list(model.variables)
    saved.trainable_variables = list(model.trainable_variables)
    saved.__call__ = tf.function(
        lambda images: network_probabilities(model, images),
        autograph=False,
        input_signature=[tf.TensorSpec([None, size_px, size_px, 3], tf.float32, name="images")],
    )
    return saved


def labels_of(probabilities: tf.Tensor) -> tf.Tensor:
    """uint8 labels `[..., 1]`: the most probable class of probabilities `[..., K]`.

    uint8 as the label-index PNGs are: 1 byte a pixel to clients, up to 256 classes.
    """
    return tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8)[..., None]


def decision_name(task: classes.Task) -> str:
    """The output that says what each pixel is: `mask` (binary) or `labels` (K classes)."""
    return "mask" if task.is_binary else "labels"


def signature_names(task: classes.Task, resize: str = "stretch") -> list[str]:
    """The signatures of an export of `task`'s model; a binary one keeps the original two.

    A model trained on squares cut from photos (`resize="crop"`) adds the
    network alone on such squares, for clients that tile photos themselves.
    """
    names = [DEFAULT_SIGNATURE, IMAGES_SIGNATURE]
    if not task.is_binary:
        names.append(LABELS_SIGNATURE)
    if resize == "crop":
        names.append(SQUARES_SIGNATURE)
    return names


def _check_channels(model: tf.keras.Model, task: classes.Task) -> None:
    """A model with other channels than `task` would serve masks or labels of nonsense."""
    channels = model.output_shape[-1]
    if channels != task.num_channels:
        raise ValueError(
            f"the model outputs {channels} channel(s) but the task has {task.num_classes} "
            f"class(es) ({task.num_channels} channel(s)); pass the model's own task"
        )


def make_signatures(
    model: tf.keras.Model,
    threshold: float = DEFAULT_THRESHOLD,
    resize: str = "stretch",
    task: classes.Task = classes.BINARY,
    crop_side_px: int = 0,
) -> dict:
    """The signature functions of an export, by name (module docstring).

    Args:
        model: float images `[b, s, s, 3]` in 0..1 -> probabilities `[b, s, s, C]`.
        threshold: binary only: the probability above which `mask` is 1.
        resize: how the model was trained to see a photo (`data.resize`).
        task: the model's classes; binary by default.
        crop_side_px: `resize="crop"` only: the short side photos are scaled to.

    Raises:
        ValueError: the model's output channels are not the task's.
    """
    _check_channels(model, task)
    size_px = model.input_shape[1]
    channels = task.num_channels
    decision = decision_name(task)

    def decide(probabilities):
        # At the photo's size: what a client would compute from the probabilities.
        if task.is_binary:
            return tf.cast(probabilities > threshold, tf.uint8)
        return labels_of(probabilities)

    def predict(squares):
        return model_probabilities(model, squares)

    def cropped(image, height, width):
        return crop_probabilities(predict, image, size_px, crop_side_px, height, width)

    probabilities_spec = tf.TensorSpec([None, None, channels], tf.float32)

    images_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

    # The serving functions are graph-style code: no autograph rewriting at export.
    @tf.function(input_signature=[images_spec], autograph=False)
    def serve_images(images):
        shape = tf.shape(images)
        if resize == "crop":
            restored = tf.map_fn(
                lambda one: cropped(one, shape[1], shape[2]),
                images,
                fn_output_signature=probabilities_spec,
            )
            return {"probabilities": restored, decision: decide(restored)}
        square = decode.to_model_square(images, size_px, resize)
        probabilities = model_probabilities(model, square)
        restored = resize_probabilities(probabilities, shape[1], shape[2], resize)
        return {"probabilities": restored, decision: decide(restored)}

    def encoded_cropped_outputs(image_bytes, with_probabilities=True):
        # Each photo is its own batch of squares; results of different sizes are
        # gathered ragged and zero-padded to the largest.
        def one_photo(data):
            image = decode.decode_image_for_model(data, crop_side_px)
            size = decode.upright_size(data, image)
            probabilities = cropped(image, size[0], size[1])
            as_ragged = lambda x: tf.RaggedTensor.from_tensor(x, ragged_rank=1)  # noqa: E731
            return as_ragged(probabilities), as_ragged(decide(probabilities)), size

        probabilities, decided, sizes = tf.map_fn(
            one_photo,
            image_bytes,
            fn_output_signature=(
                tf.RaggedTensorSpec([None, None, channels], tf.float32, ragged_rank=1),
                tf.RaggedTensorSpec([None, None, 1], tf.uint8, ragged_rank=1),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        outputs = {decision: decided.to_tensor(), "height": sizes[:, 0], "width": sizes[:, 1]}
        if with_probabilities:
            outputs["probabilities"] = probabilities.to_tensor()
        return outputs

    def encoded_outputs(image_bytes, with_probabilities=True):
        if resize == "crop":
            return encoded_cropped_outputs(image_bytes, with_probabilities)

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
            padding = [[0, max_size[0] - size[0]], [0, max_size[1] - size[1]], [0, 0]]
            # Decided before padding: the padding is 0 whatever the argmax of zeros is.
            decided = tf.pad(decide(one), padding)
            return (tf.pad(one, padding), decided) if with_probabilities else decided

        decided_spec = tf.TensorSpec([None, None, 1], tf.uint8)
        restored = tf.map_fn(
            restore,
            (probabilities, sizes),
            fn_output_signature=(
                (probabilities_spec, decided_spec) if with_probabilities else decided_spec
            ),
        )
        outputs = {"height": sizes[:, 0], "width": sizes[:, 1]}
        if not with_probabilities:
            return {decision: restored, **outputs}
        return {"probabilities": restored[0], decision: restored[1], **outputs}

    @tf.function(input_signature=[bytes_spec], autograph=False)
    def serve_encoded(image_bytes):
        return encoded_outputs(image_bytes)

    @tf.function(input_signature=[bytes_spec], autograph=False)
    def serve_labels(image_bytes):
        # No probabilities to resize, pad and send: the labels are 1 byte a pixel.
        return encoded_outputs(image_bytes, with_probabilities=False)

    square_spec = tf.TensorSpec([None, size_px, size_px, 3], tf.uint8, name="images")

    @tf.function(input_signature=[square_spec], autograph=False)
    def serve_squares(images):
        return {"probabilities": predict(images)}

    functions = {
        DEFAULT_SIGNATURE: serve_encoded,
        IMAGES_SIGNATURE: serve_images,
        LABELS_SIGNATURE: serve_labels,
        SQUARES_SIGNATURE: serve_squares,
    }
    return {name: functions[name] for name in signature_names(task, resize)}


# ---------------------------------------------------------------- export


def task_metadata(task: classes.Task) -> dict:
    """The classes as an export's metadata records them (`task_of` reads them back)."""
    return {
        "num_classes": task.num_classes,
        "class_names": list(task.names),
        "ignore_label": task.ignore_label,
    }


def task_of(metadata: dict) -> classes.Task:
    """The `classes.Task` of an export's metadata; binary for exports that predate classes."""
    num_classes = int(metadata.get("num_classes", 1))
    names = tuple(metadata.get("class_names", ())) or classes.BINARY.names
    if num_classes == 1:
        return classes.Task(names=names[:1])
    return classes.Task(
        num_classes=num_classes, names=names, ignore_label=metadata.get("ignore_label")
    )


def export_metadata(
    model: tf.keras.Model,
    *,
    threshold: float,
    resize: str,
    task: classes.Task,
    crop_side_px: int = 0,
) -> dict:
    """What `assets.extra/trainer.json` records; a multi-class export has no threshold."""
    metadata = {
        "image_size": int(model.input_shape[1]),
        "resize": resize,
        "signatures": signature_names(task, resize),
        **task_metadata(task),
    }
    if resize == "crop":
        metadata["crop_side"] = int(crop_side_px)
    if task.is_binary:
        metadata["threshold"] = float(threshold)
    return metadata


def export_saved_model(
    model: tf.keras.Model,
    directory: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    resize: str = "stretch",
    task: classes.Task = classes.BINARY,
    crop_side_px: int = 0,
) -> str:
    """Writes `model` as a SavedModel at `directory`, replacing what was there.

    The model is written next to `directory` first and renamed into place, so
    a crash while exporting leaves the previous export intact.

    Args:
        model: a network from float images `[b, s, s, 3]` in 0..1 to probabilities.
        directory: the export folder (any `tf.io.gfile` path).
        threshold: binary only: the probability above which a pixel is
            foreground, in the `mask` outputs and the metadata predict reads.
            A multi-class export ignores it (the argmax decides).
        resize: how the model was trained to see a photo (`data.resize`).
        task: the model's classes (the run's `classes.task(config)`); binary by default.
        crop_side_px: `resize="crop"` only: the short side photos are scaled to.

    Returns:
        `directory`.

    Raises:
        UserError: the disk is full or the folder cannot be written.
        ValueError: the model's output channels are not the task's.
    """
    directory = directory.rstrip("/")
    temporary = workdir_lib.temporary_path(directory)
    with workdir_lib.writing(
        directory,
        what="the SavedModel export",
        needed_bytes=lambda: workdir_lib.variables_bytes(model.weights),
    ):
        try:
            signatures = make_signatures(model, threshold, resize, task, crop_side_px)
            tf.saved_model.save(saved_object(model), temporary, signatures=signatures)
            metadata = export_metadata(
                model, threshold=threshold, resize=resize, task=task, crop_side_px=crop_side_px
            )
            workdir_lib.write_json(os.path.join(temporary, METADATA_FILE), metadata)
            _replace_directory(temporary, directory)
        finally:
            if tf.io.gfile.exists(temporary):
                workdir_lib.remove_tree(temporary)
    return directory


def _replace_directory(source: str, target: str) -> None:
    """Moves `source` to `target`; a failure puts the previous `target` back."""
    previous = workdir_lib.temporary_path(target)
    if tf.io.gfile.exists(target):
        workdir_lib.move_tree(target, previous)
    try:
        workdir_lib.move_tree(source, target)
    except BaseException:
        if tf.io.gfile.exists(previous):
            workdir_lib.move_tree(previous, target)
        raise
    if tf.io.gfile.exists(previous):
        workdir_lib.remove_tree(previous)
