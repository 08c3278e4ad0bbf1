"""Decodes every image and mask the way the trainer does and lists what is wrong.

The check calls the input pipeline's own decoders (`decode.decode_image`,
`decode.decode_mask`), so that a pair that passes it is a pair the trainer
can read as intended: a second decoder (OpenCV, PIL) accepts files TensorFlow
rejects (TIFF), on which a run would stop hours in, and reads 16-bit label
masks that TensorFlow's 8 bits leave empty.

Severities: 'error' means the trainer cannot use the file, so its pair is left
out of the manifests; 'warning' means usable but likely a mistake; 'note' means
legitimate and worth knowing (a photo without the object has an empty mask).
"""

import concurrent.futures
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


def check_pairs(frame: pd.DataFrame, *, max_workers: int | None = None) -> list[Problem]:
    """Decodes every image and mask of `frame` and lists what is wrong with them.

    Args:
        frame: rows with `images` and `masks` (absolute paths).
        max_workers: decoding threads (TensorFlow's kernels release the GIL); by
            default `concurrent.futures`' choice.

    Returns:
        The problems, sorted by path: 'error' for a file the trainer cannot
        decode or a mask whose proportions differ from its image's; 'warning'
        for a mask of another scale than its image or one that is mostly gray;
        'note' for a mask that is empty, entirely foreground or not strictly
        binary (with the count of pixels between 0 and 255).
    """
    pairs = list(zip(frame["images"], frame["masks"]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
        found = pool.map(lambda pair: check_pair(*pair), pairs)
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
    pairs: pd.DataFrame, scan_problems: list[Problem], *, max_workers: int | None = None
) -> tuple[pd.DataFrame, list[Problem], int]:
    """Checks every pair and leaves out those with an 'error' problem.

    Args:
        pairs: the scan's pairs (absolute `images` and `masks`).
        scan_problems: the scan's problems (unpaired or ignored files).
        max_workers: see `check_pairs`.

    Returns:
        `(usable_pairs, problems, num_skipped)`: the pairs without errors, the
        scan's and the check's problems sorted by path, and the pairs left out
        plus the files the scan could not pair, each counted once.
    """
    logging.info("decoding %d pairs as the trainer does", len(pairs))
    start = time.monotonic()
    checked = check_pairs(pairs, max_workers=max_workers)
    logging.info("decoded them in %.1f s", time.monotonic() - start)
    unusable = {problem.path for problem in checked if problem.severity == "error"}
    usable = ~(pairs["images"].isin(unusable) | pairs["masks"].isin(unusable))
    num_unpaired = sum(problem.severity == "error" for problem in scan_problems)
    problems = sort_problems(list(scan_problems) + checked)
    return pairs[usable].reset_index(drop=True), problems, int((~usable).sum()) + num_unpaired


def check_pair(image_path: str, mask_path: str) -> list[Problem]:
    """Lists the problems of one image and its mask (see `check_pairs`)."""
    # Host work, as in the input pipeline: no eager op lands on an accelerator.
    with tf.device("/CPU:0"):
        return _check_pair_on_host(image_path, mask_path)


def _check_pair_on_host(image_path: str, mask_path: str) -> list[Problem]:
    image, image_problem = _decode(decode.decode_image, image_path)
    mask, mask_problem = _decode(decode.decode_mask, mask_path)
    problems = [p for p in (image_problem, mask_problem) if p is not None]
    if image is None or mask is None:
        return problems
    problems.append(_compare_sizes(image.shape[:2], mask.shape[:2], mask_path))
    problems += _mask_contents(mask, mask_path)
    return [problem for problem in problems if problem is not None]


def _decode(decoder, path: str) -> tuple[np.ndarray | None, Problem | None]:
    """Runs one of the pipeline's decoders on `path`; a failure becomes an 'error'."""
    try:
        # The pipeline feeds paths to TensorFlow as UTF-8; other bytes fail there.
        path.encode("utf-8")
    except UnicodeEncodeError:
        return None, Problem(path, "file name is not valid UTF-8, so TensorFlow cannot open it")
    try:
        return decoder(tf.constant(path)).numpy(), None
    except tf.errors.OpError as error:
        what = "mask" if decoder is decode.decode_mask else "image"
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


def _mask_contents(mask: np.ndarray, mask_path: str) -> list[Problem | None]:
    """Problems of a decoded mask `[h, w, 1]` in {0, 1}: empty, full, not binary."""
    # The values before thresholding, read as `decode.decode_mask` reads them.
    raw = decode.decode_mask_values(tf.constant(mask_path)).numpy()
    if mask.all():
        full = Problem(mask_path, "mask is entirely foreground", "note")
        return [full, _gray_pixels(raw, mask_path)]
    if mask.any():
        return [_gray_pixels(raw, mask_path)]
    if not raw.any():
        deepest = _max_as_16_bits(mask_path)
        if deepest:
            message = f"16-bit mask with values up to {deepest}: the trainer reads 8 bits, "
            message += "which leaves it empty; save it as an 8-bit PNG with values 0/255 or 0/1"
            return [Problem(mask_path, message)]
    empty = Problem(mask_path, "mask is empty (no foreground)", "note")
    return [empty, _gray_pixels(raw, mask_path)]


def _max_as_16_bits(mask_path: str) -> int:
    """The largest value of a PNG read with 16 bits per channel; 0 for other formats."""
    try:
        deep = tf.io.decode_png(tf.io.read_file(mask_path), channels=1, dtype=tf.uint16)
    except tf.errors.OpError:
        return 0
    return int(deep.numpy().max())


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
