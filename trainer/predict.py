"""Predicts masks for photos of any size: a mask (or label map) and an overlay per photo.

    python -m trainer.predict --model=runs/demo --input='photos/*.jpg' --output=predictions
    python -m trainer.predict --model=runs/demo/export --input=photos --output=out --tta

--model is a work directory or a SavedModel export (see trainer.inference);
--input a file, a folder (its image files, not recursive) or a glob. For each
photo NAME.ext the output folder gets

  NAME_mask.png     at the photo's original size: 0/255 for a binary model;
                    for a multi-class one the label map, each pixel its most
                    probable class 0..K-1 (0 the background), as training's masks
  NAME_overlay.png  the photo with the mask tinted over it and its contour drawn;
                    for several classes each class in its colour of
                    `trainer.colours` (background untinted) and a legend naming
                    them drawn over the bottom of the photo

Photos are decoded as training decodes them (TensorFlow, turned upright by
their EXIF orientation: masks and overlays are in the upright frame), resized
to the model's size in a tf.data pipeline, predicted in batches, and the
probabilities resized back before thresholding (binary) or taking the argmax
(several classes; --threshold is refused), as the export's signatures do. A
photo that cannot be read is skipped with a warning naming it; the run fails
(exit 1) only when no photo could be read.
"""

import collections
import concurrent.futures
import glob
import os
import sys

from trainer import cli, colours, inference, serving
from trainer import workdir as workdir_lib
from trainer.data import decode, layout
from trainer.errors import UserError

import cv2
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

OVERLAY_COLOUR_RGB = (0, 255, 128)
OVERLAY_ALPHA = 0.45  # share of the tint in the overlay's masked pixels
LEGEND_BACKGROUND_RGB = (32, 32, 32)
LEGEND_TEXT_RGB = (255, 255, 255)
LEGEND_FONT = cv2.FONT_HERSHEY_SIMPLEX

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags; called by the entry point only.

    Importing this module beside the other entry points then defines no flag twice.
    """
    flags.DEFINE_string("model", None, "A training work directory, or a SavedModel export.")
    flags.DEFINE_string("input", None, "An image file, a folder of images, or a glob.")
    flags.DEFINE_string("output", None, "Folder for NAME_mask.png and NAME_overlay.png.")
    flags.DEFINE_float(
        "threshold",
        None,
        "Binary models only: a pixel is foreground when its probability is above; default: "
        "the export's stored threshold (trainer.export --threshold), 0.5 for a work directory.",
    )
    flags.DEFINE_bool("tta", False, "Average with the prediction of the mirrored photo.")
    flags.DEFINE_integer("batch_size", 8, "Photos per inference batch.")
    flags.mark_flags_as_required(["model", "input", "output"])


def find_inputs(pattern: str) -> list[str]:
    """The image files named by a file, a folder (not recursive) or a glob, sorted.

    A file named directly is taken whatever its extension; folders and globs
    yield the files with an image extension only. Any of them may be a
    TensorFlow filesystem URL (`gs://BUCKET/photos/*.jpg`); `**` recursion
    works for local globs only.

    Raises:
        UserError: nothing matches.
    """
    if layout.is_url(pattern):
        isfile = lambda path: tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)  # noqa: E731
        isdir, listdir, matches = tf.io.gfile.isdir, tf.io.gfile.listdir, tf.io.gfile.glob
    else:
        isfile, isdir, listdir = os.path.isfile, os.path.isdir, os.listdir
        matches = lambda pattern: glob.glob(pattern, recursive=True)  # noqa: E731
    if isfile(pattern):
        return [pattern]
    if isdir(pattern):
        folder = pattern.rstrip("/")
        candidates = [f"{folder}/{name.rstrip('/')}" for name in listdir(pattern)]
    else:
        candidates = matches(pattern)
    paths = sorted(
        path
        for path in candidates
        if os.path.splitext(path)[1].lower() in layout.IMAGE_EXTENSIONS and isfile(path)
    )
    if not paths:
        extensions = ", ".join(sorted(layout.IMAGE_EXTENSIONS))
        raise UserError(
            f"--input={pattern} matches no image file ({extensions}); give a file, a folder "
            "or a quoted glob such as 'photos/*.jpg'"
        )
    return paths


def output_names(paths: list[str]) -> list[str]:
    """NAME of each output: the file stem, with the extension added where stems clash."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    counts = collections.Counter(stems)
    names = []
    for path, stem in zip(paths, stems):
        if counts[stem] > 1:
            stem = f"{stem}_{os.path.splitext(path)[1].lstrip('.').lower()}"
        names.append(stem)
    # Same stem and extension in different folders of a glob: number them.
    seen = collections.Counter()
    for i, name in enumerate(names):
        seen[name] += 1
        if seen[name] > 1:
            names[i] = f"{name}_{seen[name]}"
    return names


def make_photo_dataset(
    paths: list[str],
    size_px: int,
    photos_per_batch: int,
    resize: str = "stretch",
    crop_side_px: int = 0,
) -> tf.data.Dataset:
    """Batches of `(index, photo, height_width, resized, resized_size)` for the readable photos.

    photo: uint8 `[b, H, W, 3]`, the batch's photos zero-padded to the largest;
    height_width: int32 `[b, 2]`; resized: uint8 `[b, size_px, size_px, 3]`, or
    under `resize="crop"` the photos as decoded for a short side of at least
    `crop_side_px` (a large JPEG reduced; `serving.crop_probabilities` scales
    and tiles them), zero-padded to the largest; resized_size: int32 `[b, 2]`,
    their own size.
    Unreadable photos are dropped; their indices are missing from the batches.
    """

    def load(index, path):
        encoded = tf.io.read_file(path)
        photo = decode.decode_image_bytes(encoded)  # whole, for the overlay
        # The network's input is made as in training (a large JPEG decoded reduced).
        if resize == "crop":
            resized = decode.decode_image_for_model(encoded, crop_side_px)
        else:
            for_model = decode.decode_image_for_model(encoded, size_px)
            resized = decode.to_model_square(for_model, size_px, resize)
        return index, photo, tf.shape(photo)[:2], resized, tf.shape(resized)[:2]

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors()
    dataset = dataset.padded_batch(photos_per_batch)
    return dataset.prefetch(2)


def chosen_threshold(flag_value: float | None, trained: inference.TrainedModel) -> float:
    """`--threshold` when given, else the one stored with the model (0.5 for a work directory).

    Raises:
        UserError: `--threshold` is given for a multi-class model, whose argmax decides.
    """
    if flag_value is not None and not trained.task.is_binary:
        raise UserError(
            f"--threshold={flag_value:g} applies to binary models only; {trained.path} has "
            f"{trained.task.num_classes} classes and the argmax decides each pixel's: leave it out"
        )
    return trained.threshold if flag_value is None else flag_value


def make_predict_fn(trained: inference.TrainedModel, *, tta: bool):
    """uint8 `[b, s, s, 3]` -> probabilities `[b, s, s, C]`, mirrored-averaged if tta."""

    @tf.function
    def predict(images):
        probabilities = trained.predict(images)
        if tta:
            mirrored = trained.predict(tf.reverse(images, axis=[2]))
            probabilities = (probabilities + tf.reverse(mirrored, axis=[2])) / 2.0
        return probabilities

    return predict


def draw_overlay(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo (RGB uint8 `[h, w, 3]`) with the mask (bool `[h, w]`) tinted and outlined."""
    overlay = photo.copy()
    colour = np.array(OVERLAY_COLOUR_RGB, np.float32)
    overlay[mask] = np.round((1 - OVERLAY_ALPHA) * photo[mask] + OVERLAY_ALPHA * colour).astype(
        np.uint8
    )
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    thickness = max(1, round(min(mask.shape) / 250))  # visible on large photos too
    cv2.drawContours(overlay, contours, -1, OVERLAY_COLOUR_RGB, thickness)
    return overlay


def draw_labels_overlay(photo: np.ndarray, labels: np.ndarray, task) -> np.ndarray:
    """The photo (RGB uint8 `[h, w, 3]`) with each class of `labels` (`[h, w]`) tinted and outlined.

    The background (class 0) is left as photographed; a legend naming the
    classes (`task.names`) in their colours covers the bottom of the photo.
    """
    palette = colours.palette(task.num_classes)
    tint = colours.label_image(labels, task.num_classes, task.ignore_label).astype(np.float32)
    overlay = photo.copy()
    tinted = labels > 0
    overlay[tinted] = np.round(
        (1 - OVERLAY_ALPHA) * photo[tinted] + OVERLAY_ALPHA * tint[tinted]
    ).astype(np.uint8)
    thickness = max(1, round(min(labels.shape) / 250))  # visible on large photos too
    for label in range(1, task.num_classes):
        contours, _ = cv2.findContours(
            (labels == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(overlay, contours, -1, _rgb(palette[label]), thickness)
    draw_legend(overlay, task.names, palette)
    return overlay


def _rgb(colour) -> tuple[int, int, int]:
    """An OpenCV colour: a tuple of Python ints (it refuses numpy's)."""
    return tuple(int(c) for c in colour)


def draw_legend(overlay: np.ndarray, names, palette: np.ndarray) -> None:
    """Draws over the bottom of `overlay` a strip with each class's swatch and name.

    Drawn over the photo rather than added below it, so that an overlay keeps
    its photo's size, as the mask does. Text scales with the photo; entries
    wrap onto more rows where the photo is too narrow for one row (the strip
    covers at most half the photo, the rest is cut off). Swatches are outlined,
    so that the black background's shows on the dark strip.
    """
    height, width = overlay.shape[:2]
    text_px = max(8, round(min(height, width) / 24))
    (_, base_px), _ = cv2.getTextSize("Ag", LEGEND_FONT, 1.0, 1)
    scale = text_px / base_px
    stroke = max(1, round(text_px / 12))
    gap = max(2, text_px // 3)
    row_px = text_px + 2 * gap
    entries, x, row = [], gap, 0
    for name, colour in zip(names, palette):
        (text_width, _), _ = cv2.getTextSize(name, LEGEND_FONT, scale, stroke)
        entry_width = text_px + gap + text_width
        if x > gap and x + entry_width > width:
            x, row = gap, row + 1
        entries.append((x, row, name, colour))
        x += entry_width + 2 * gap
    # At most half the photo: a tiny photo's prediction stays in sight.
    top = height - min(max(height // 2, 1), (row + 1) * row_px)
    overlay[top:] = LEGEND_BACKGROUND_RGB
    for x, row, name, colour in entries:
        y = top + row * row_px + gap
        corner = (x + text_px - 1, y + text_px - 1)
        cv2.rectangle(overlay, (x, y), corner, _rgb(colour), cv2.FILLED)
        cv2.rectangle(overlay, (x, y), corner, LEGEND_TEXT_RGB, 1)
        origin = (x + text_px + gap, y + text_px - 1)
        cv2.putText(overlay, name, origin, LEGEND_FONT, scale, LEGEND_TEXT_RGB, stroke, cv2.LINE_AA)


def write_png(path: str, image: np.ndarray) -> None:
    """Writes a grayscale or RGB uint8 image, whole or not at all.

    Raises:
        OSError: the image cannot be encoded.
        UserError: the disk is full or the folder cannot be written.
    """
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    workdir_lib.write_bytes(path, encoded.tobytes())


def predict_files(
    trained: inference.TrainedModel,
    paths: list[str],
    output_dir: str,
    *,
    threshold: float = 0.5,
    tta: bool = False,
    photos_per_batch: int = 8,
) -> list[str]:
    """Writes NAME_mask.png and NAME_overlay.png for each readable photo.

    A binary model's masks are its probabilities above `threshold`; a
    multi-class model's are label maps, the argmax (`threshold` unused).

    Returns:
        The paths that could not be read (each also logged as a warning).
    """
    with workdir_lib.writing(output_dir, what="the predicted masks"):
        tf.io.gfile.makedirs(output_dir)
    names = output_names(paths)
    predict = make_predict_fn(trained, tta=tta)
    skipped = []

    def skip(first, stop):
        # The dataset drops unreadable photos: a gap in the indices names them.
        for index in range(first, stop):
            logging.warning("skipped %s: not a readable image", paths[index])
            skipped.append(paths[index])

    task = trained.task

    def write(index, photo, probabilities):
        stem = os.path.join(output_dir, names[index])
        if task.is_binary:
            mask = probabilities[..., 0] > threshold
            write_png(f"{stem}_mask.png", mask.astype(np.uint8) * 255)
            write_png(f"{stem}_overlay.png", draw_overlay(photo, mask))
            return
        # The argmax at the photo's size, as the export's `labels` output.
        labels = np.argmax(probabilities, axis=-1).astype(np.uint8)
        write_png(f"{stem}_mask.png", labels)
        write_png(f"{stem}_overlay.png", draw_labels_overlay(photo, labels, task))

    # PNG encoding releases the GIL: files are written while the next batch predicts.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as writers:
        pending, next_index = collections.deque(), 0
        for indices, photos, sizes, resized, resized_sizes in make_photo_dataset(
            paths, trained.image_size, photos_per_batch, trained.resize, trained.crop_side_px
        ):
            for index, photo, (height, width), restored in zip(
                indices.numpy(),
                photos.numpy(),
                sizes.numpy(),
                _at_photo_sizes(trained, predict, resized, sizes, resized_sizes),
            ):
                skip(next_index, index)
                next_index = index + 1
                pending.append(writers.submit(write, index, photo[:height, :width], restored))
            while len(pending) > 2 * photos_per_batch:  # bounds the photos held in memory
                pending.popleft().result()
        skip(next_index, len(paths))
        for future in pending:
            future.result()  # raises the first write error, if any
    return skipped


def _at_photo_sizes(trained, predict, resized, sizes, resized_sizes):
    """Each photo's probabilities at its own size, as numpy `[height, width, C]`."""
    if trained.resize != "crop":
        for one, (height, width) in zip(predict(resized), sizes.numpy()):
            yield serving.resize_probabilities(one, height, width, trained.resize).numpy()
        return
    for for_model, (height, width), (decoded_height, decoded_width) in zip(
        resized, sizes.numpy(), resized_sizes.numpy()
    ):
        for_model = for_model[:decoded_height, :decoded_width]
        yield serving.crop_probabilities(
            predict, for_model, trained.image_size, trained.crop_side_px, height, width
        ).numpy()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.threshold is not None and not 0.0 < FLAGS.threshold < 1.0:
        raise UserError(f"--threshold={FLAGS.threshold} must be between 0 and 1")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size} must be at least 1")
    inference.model_kind(FLAGS.model)  # a wrong path fails before any slow work
    paths = find_inputs(FLAGS.input)
    trained = inference.load_trained_model(FLAGS.model)
    threshold = chosen_threshold(FLAGS.threshold, trained)
    decided_by = f"threshold {threshold:g}" if trained.task.is_binary else "argmax"
    logging.info("Predicting %d image(s) with %s, %s", len(paths), trained.path, decided_by)
    skipped = predict_files(
        trained,
        paths,
        FLAGS.output,
        threshold=threshold,
        tta=FLAGS.tta,
        photos_per_batch=FLAGS.batch_size,
    )
    done = len(paths) - len(skipped)
    if done == 0:
        print(f"error: none of the {len(paths)} input image(s) could be read", file=sys.stderr)
        return 1
    note = f" ({len(skipped)} unreadable, skipped)" if skipped else ""
    print(f"wrote masks and overlays of {done} image(s) to {FLAGS.output}{note}", flush=True)
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
