"""Decodes every image and mask the way the trainer does and lists what is wrong.

The check calls the input pipeline's own decoders (`decode.decode_image`,
`decode.decode_mask`), so that a pair that passes it is a pair the trainer
can read as intended: a second decoder (OpenCV, PIL) accepts files TensorFlow
rejects (TIFF), on which a run would stop hours in, and reads 16-bit label
masks that TensorFlow's 8 bits leave empty.

Masks are read for the model's classes (`model.num_classes`): binary masks (1)
are binarised at 127, label-index masks (2 or more) are read as stored. Each
kind's mistakes are told apart here, before a run trains on them: a binary run
fed label-index masks would binarise their classes away (values 1, 2 and 3 all
fall below 127) and learn from empty masks without a word, and a multi-class
run fed 0/255 masks would ignore all their foreground (255 is the ignore label).

Severities: 'error' means the trainer cannot use the file, so its pair is left
out of the manifests; 'warning' means usable but likely a mistake; 'note' means
legitimate and worth knowing (a photo without the object has an empty mask).
"""

import concurrent.futures
import functools
import re
import time

from trainer.data import decode
from trainer.data.layout import Problem

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging

# Masks saved at another scale round their sides; a larger difference in
# proportions cannot line up with the image once both are resized to a square.
_ASPECT_TOLERANCE = 0.02
# JPEG noise and antialiased edges put a few pixels between 0 and 255; when most
# are, the file is likely a photo or a soft map rather than a mask.
_MOSTLY_GRAY_SHARE = 0.5
_RESAVE = "replace it or re-save it as PNG"
# A binary-mode mask is taken for label indices when its values other than 255
# are 0 (background) and at most 31 others, all below 128, more than a 0/1 mask's
# (a value of 2 or more, or 1 beside 255), and each of them fills a 3x3 block
# somewhere: classes are areas. The gray pixels of a 0/255 mask are transitions
# from 0 to 255 (JPEG noise, antialiased edges): where its foreground is wider
# than an edge they pass through 128..254, and elsewhere they are lines and
# specks, whose values do not all fill blocks.
_MAX_LABEL = 127  # values above are foreground once binarised, so no label is lost
_MAX_LABEL_VALUES = 32
_BINARY_IGNORE = 255  # the usual ignore label: VOC's boundaries
_MAX_LISTED = 8


def check_pairs(
    frame: pd.DataFrame,
    *,
    max_workers: int | None = None,
    num_classes: int = 1,
    ignore_label: int = 255,
) -> list[Problem]:
    """Decodes every image and mask of `frame` and lists what is wrong with them.

    Args:
        frame: rows with `images` and `masks` (absolute paths).
        max_workers: decoding threads (TensorFlow's kernels release the GIL); by
            default `concurrent.futures`' choice.
        num_classes: the model's classes (`model.num_classes`): 1 reads binary
            masks, 2 or more label-index masks with values 0..num_classes-1.
        ignore_label: the mask value no loss counts (`data.ignore_label`);
            multi-class only.

    Returns:
        The problems, sorted by path: 'error' for a file the trainer cannot
        decode, a mask whose proportions differ from its image's, a label-index
        mask when binary, or a value that is neither a class nor the ignore
        label when multi-class; 'warning' for a mask of another scale than its
        image, a mostly gray binary mask, or a 0/255 mask when multi-class;
        'note' for a binary mask that is empty, entirely foreground or not
        strictly binary (with the count of pixels between 0 and 255), or a
        label-index mask without a foreground class.
    """
    pairs = list(zip(frame["images"], frame["masks"]))
    classes = {"num_classes": num_classes, "ignore_label": ignore_label}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
        found = pool.map(lambda pair: check_pair(*pair, **classes), pairs)
        problems = [problem for pair_problems in found for problem in pair_problems]
    return sort_problems(problems)


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Sorts by path, then message: one file's problems sit together."""
    return sorted(problems, key=lambda p: (p.path, p.message))


def log_problems(problems: list[Problem]) -> None:
    """Logs one line per problem, `severity: path: message`, notes at INFO level."""
    for problem in problems:
        log = {"error": logging.error, "warning": logging.warning}.get(problem.severity)
        (log or logging.info)("%s", problem)


def problems_frame(problems: list[Problem]) -> pd.DataFrame:
    """The problems as a frame with columns path, severity, message (for problems.csv)."""
    rows = [(problem.path, problem.severity, problem.message) for problem in problems]
    return pd.DataFrame(rows, columns=["path", "severity", "message"])


def drop_unusable(
    pairs: pd.DataFrame,
    scan_problems: list[Problem],
    *,
    max_workers: int | None = None,
    num_classes: int = 1,
    ignore_label: int = 255,
) -> tuple[pd.DataFrame, list[Problem], int]:
    """Checks every pair and leaves out those with an 'error' problem.

    Args:
        pairs: the scan's pairs (absolute `images` and `masks`).
        scan_problems: the scan's problems (unpaired or ignored files).
        max_workers, num_classes, ignore_label: see `check_pairs`.

    Returns:
        `(usable_pairs, problems, num_skipped)`: the pairs without errors, the
        scan's and the check's problems sorted by path, and the pairs left out
        plus the files the scan could not pair, each counted once.
    """
    logging.info("decoding %d pairs as the trainer does", len(pairs))
    start = time.monotonic()
    checked = check_pairs(
        pairs, max_workers=max_workers, num_classes=num_classes, ignore_label=ignore_label
    )
    logging.info("decoded them in %.1f s", time.monotonic() - start)
    unusable = {problem.path for problem in checked if problem.severity == "error"}
    usable = ~(pairs["images"].isin(unusable) | pairs["masks"].isin(unusable))
    num_unpaired = sum(problem.severity == "error" for problem in scan_problems)
    problems = sort_problems(list(scan_problems) + checked)
    return pairs[usable].reset_index(drop=True), problems, int((~usable).sum()) + num_unpaired


def check_pair(
    image_path: str, mask_path: str, *, num_classes: int = 1, ignore_label: int = 255
) -> list[Problem]:
    """Lists the problems of one image and its mask (see `check_pairs`)."""
    # Host work, as in the input pipeline: no eager op lands on an accelerator.
    with tf.device("/CPU:0"):
        return _check_pair_on_host(image_path, mask_path, num_classes, ignore_label)


def _check_pair_on_host(
    image_path: str, mask_path: str, num_classes: int, ignore_label: int
) -> list[Problem]:
    image, image_problem = _decode(decode.decode_image, image_path, "image")
    read_mask = functools.partial(decode.decode_mask, num_classes=num_classes)
    mask, mask_problem = _decode(read_mask, mask_path, "mask")
    problems = [p for p in (image_problem, mask_problem) if p is not None]
    if image is None or mask is None:
        return problems
    problems.append(_compare_sizes(image.shape[:2], mask.shape[:2], mask_path))
    if num_classes == 1:
        problems += _mask_contents(mask, mask_path)
    else:
        problems += _label_contents(mask, mask_path, num_classes, ignore_label)
    return [problem for problem in problems if problem is not None]


def _decode(decoder, path: str, what: str) -> tuple[np.ndarray | None, Problem | None]:
    """Runs one of the pipeline's decoders on `path`; a failure becomes an 'error'."""
    try:
        # The pipeline feeds paths to TensorFlow as UTF-8; other bytes fail there.
        path.encode("utf-8")
    except UnicodeEncodeError:
        return None, Problem(path, "file name is not valid UTF-8, so TensorFlow cannot open it")
    try:
        return decoder(tf.constant(path)).numpy(), None
    except tf.errors.OpError as error:
        reason = _op_error_text(error)
        return None, Problem(path, f"the trainer cannot read this {what} ({reason}); {_RESAVE}")


def _op_error_text(error: tf.errors.OpError) -> str:
    """TensorFlow's message without its op and device decorations."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
    text = re.sub(r"\s*\[Op:.*", "", text, flags=re.DOTALL).strip()
    return text or type(error).__name__


def _compare_sizes(image_hw, mask_hw, mask_path: str) -> Problem | None:
    if tuple(image_hw) == tuple(mask_hw):
        return None
    (image_h, image_w), (mask_h, mask_w) = image_hw, mask_hw
    sizes = f"mask is {mask_w}x{mask_h} but its image is {image_w}x{image_h}"
    if abs(mask_w * image_h - image_w * mask_h) <= _ASPECT_TOLERANCE * image_w * mask_h:
        return Problem(mask_path, f"{sizes}; both are resized to the training size", "warning")
    return Problem(
        mask_path,
        f"{sizes}: other proportions, so it cannot line up with its image "
        "(rotated, or from another photo?)",
    )


# ---------------------------------------------------------------- binary masks


def _mask_contents(mask: np.ndarray, mask_path: str) -> list[Problem | None]:
    """Problems of a binary mask `[h, w, 1]` in {0, 1}: label indices, empty, full, not binary."""
    # The values before thresholding, read as `decode.decode_mask` reads them.
    raw = decode.decode_mask_values(tf.constant(mask_path)).numpy()
    labels = _label_values(raw[..., 0])
    if labels is not None:
        has_ignore = bool((raw == _BINARY_IGNORE).any())
        return [Problem(mask_path, _label_mask_message(labels, has_ignore))]
    if mask.all():
        full = Problem(mask_path, "mask is entirely foreground", "note")
        return [full, _gray_pixels(raw, mask_path)]
    if mask.any():
        return [_gray_pixels(raw, mask_path)]
    if not raw.any():
        deep = _read_as_16_bits(mask_path, "empty", "values 0/255 or 0/1")
        if deep:
            return [deep]
    empty = Problem(mask_path, "mask is empty (no foreground)", "note")
    return [empty, _gray_pixels(raw, mask_path)]


def _label_values(raw: np.ndarray) -> list[int] | None:
    """The values other than 255 of a mask `[h, w]` that holds label indices; None for others.

    Label indices (see `_MAX_LABEL`): 0 and at most 31 other values, all below
    128, not only 0 and 1 (kept as a binary mask), each filling a 3x3 block.
    """
    values = np.unique(raw)
    labels = values[values != _BINARY_IGNORE]
    if values.max() <= 1 or labels.max(initial=0) == 0 or labels[0] != 0:
        return None  # a 0/1 mask, 0/255 without gray, or no background
    if labels.max() > _MAX_LABEL or len(labels) > _MAX_LABEL_VALUES:
        return None
    if not np.isin(labels[1:], _block_values(raw)).all():
        return None
    return labels.tolist()


def _block_values(raw: np.ndarray) -> np.ndarray:
    """The values that fill a 3x3 block of a mask `[h, w]` somewhere: areas, not lines."""
    height, width = raw.shape
    center = raw[1:-1, 1:-1]
    in_block = np.ones(center.shape, bool)
    for dy in range(3):
        for dx in range(3):
            in_block &= raw[dy : dy + height - 2, dx : dx + width - 2] == center
    return np.unique(center[in_block])


def _label_mask_message(labels: list[int], has_ignore: bool) -> str:
    count = labels[-1] + 1
    held = _listed(labels) + (f" and {_BINARY_IGNORE}" if has_ignore else "")
    ignored = f", {_BINARY_IGNORE} ignored" if has_ignore else ""
    flag = f"num_classes={count}"
    return (
        f"mask holds label values {held} (a label-index mask of {count} classes{ignored}?); "
        f"the binary trainer would binarise it at {decode.BINARY_THRESHOLD} and lose them: "
        f"pass --config.model.{flag} to train (and --{flag} to prepare)"
    )


def _listed(values) -> str:
    """'0, 1, 2': the first `_MAX_LISTED` values, then '...' when there are more."""
    shown = [str(value) for value in values[:_MAX_LISTED]]
    return ", ".join(shown + ["..."] * (len(values) > _MAX_LISTED))


def _read_as_16_bits(mask_path: str, reads_as: str, save_with: str) -> Problem | None:
    """An 'error' for a 16-bit PNG that 8 bits leave all zero; None for other files."""
    try:
        deep = tf.io.decode_png(tf.io.read_file(mask_path), channels=1, dtype=tf.uint16)
    except tf.errors.OpError:
        return None
    deepest = int(deep.numpy().max())
    if not deepest:
        return None
    return Problem(
        mask_path,
        f"16-bit mask with values up to {deepest}: the trainer reads 8 bits, which leaves it "
        f"{reads_as}; save it as an 8-bit PNG with {save_with}",
    )


def _gray_pixels(raw: np.ndarray, mask_path: str) -> Problem | None:
    """Counts the mask's pixels strictly between 0 and 255, before binarisation."""
    if raw.max() <= 1:
        return None  # a label-index mask: 0/1 by design
    num_gray = int(np.count_nonzero((raw > 0) & (raw < 255)))
    if not num_gray:
        return None
    share = num_gray / raw.size
    message = (
        f"mask is not binary: {num_gray} of {raw.size} pixels ({share:.1%}) are between "
        f"1 and 254; the trainer binarises it at {decode.BINARY_THRESHOLD}"
    )
    if share > _MOSTLY_GRAY_SHARE:
        return Problem(mask_path, f"{message}; is it a mask?", "warning")
    return Problem(mask_path, message, "note")


# ---------------------------------------------------------------- label-index masks


def _label_contents(
    labels: np.ndarray, mask_path: str, num_classes: int, ignore_label: int
) -> list[Problem | None]:
    """Problems of a label-index mask `[h, w, 1]`: values that are no class, no foreground."""
    values = np.unique(labels)
    strays = values[(values >= num_classes) & (values != ignore_label)]
    classes = values[values != ignore_label]
    if strays.size:
        return [_stray_values(mask_path, values, strays, num_classes, ignore_label)]
    if not values.any():
        deep = _read_as_16_bits(mask_path, "all background", f"label values 0..{num_classes - 1}")
        if deep:
            return [deep]
    if ignore_label == _BINARY_IGNORE and values.tolist() == [0, ignore_label]:
        message = (
            f"mask holds only 0 and {ignore_label}, as a 0/255 binary mask does: with "
            f"--config.model.num_classes={num_classes}, {ignore_label} is the ignore label, "
            "so all its foreground would be ignored; set --config.model.num_classes=1 for "
            "binary masks"
        )
        return [Problem(mask_path, message, "warning")]
    if not classes.size:
        message = f"every pixel is the ignore label {ignore_label}: no loss counts this mask"
        return [Problem(mask_path, message, "note")]
    if not classes.any():
        return [Problem(mask_path, "no foreground class in this mask", "note")]
    return []


def _stray_values(
    mask_path: str, values: np.ndarray, strays: np.ndarray, num_classes: int, ignore_label: int
) -> Problem:
    """The 'error' for mask values (`strays` of `values`) neither a class nor the ignore label."""
    plural = len(strays) > 1
    are_not = "are not classes" if plural else "is not a class"
    message = (
        f"value{'s' * plural} {_listed(strays.tolist())} {are_not} of "
        f"--config.model.num_classes={num_classes} "
        f"(0..{num_classes - 1}) nor the ignore label {ignore_label}; relabel "
        f"{'them' if plural else 'it'} or raise num_classes"
    )
    if values.tolist() == [0, _BINARY_IGNORE]:
        message += "; a 0/255 binary mask? set --config.model.num_classes=1 for those"
    elif bool(decode.is_jpeg(tf.io.read_file(mask_path))):
        message += "; JPEG compression alters label values: save label masks as PNG"
    return Problem(mask_path, message)
