"""A disk cache of decoded, resized image/mask pairs (`data.cache = "disk"`).

Decoding dominates the input pipeline: a 768 px PNG photo costs about 11 ms on
one core, augmenting it at 384 px about 1 ms, and training decodes every photo
once per epoch. The cache decodes and resizes each pair once, at the training
size, and keeps it raw (uint8: image, then mask); reading it back is one file
read and a reshape.

One file per pair, named by a hash of everything its content depends on (both
paths, their sizes and modification times, the image size, the resize version):
  - the pipeline's file-name shuffle and skip-based resume stay as they are:
    any example is one read away, nothing decoded is held in a buffer;
  - a changed photo or another image size gets new files, never stale ones;
  - a write is atomic (a temporary file, then a rename; a bucket object
    appears whole), so a killed run leaves no half file, and workers or runs
    sharing the folder can write side by side;
  - when the files fit in memory the OS page cache holds them, outside the
    trainer's own memory, and they outlive the run for the next one.

tf.data's own `Dataset.cache` is not used: it replays one fixed order, so
shuffling after it needs the buffer of decoded photos that we avoid.
"""

import hashlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from concurrent import futures

from trainer.errors import UserError

import ml_collections
import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging

MODES = ("none", "disk")
# Bump when the decode/resize code changes what a cached pair holds.
FORMAT_VERSION = 2
_SUFFIX = ".pair"
_LOG_EVERY_S = 15.0

# (image path, mask path) string tensors -> uint8 image [s, s, 3], uint8 mask [s, s, 1].
LoadFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def check_config(data_config: ml_collections.ConfigDict) -> None:
    """Raises UserError when `data.cache` names no known mode."""
    if data_config.cache not in MODES:
        raise UserError(
            f"--config.data.cache={data_config.cache!r} is not one of {', '.join(MODES)}"
        )


def cache_dir(data_config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """The folder of the cache for this run, or None when the cache is off.

    `data.cache_dir` when set (e.g. a local disk when the workdir is a bucket),
    else `WORKDIR/cache`; either way shared by every run that points at it.
    """
    check_config(data_config)
    if data_config.cache == "none":
        return None
    return data_config.cache_dir or os.path.join(workdir, "cache")


def pair_bytes(size_px: int) -> int:
    """Bytes of one cached pair: a uint8 RGB image and a uint8 mask."""
    return size_px * size_px * 4


def read_pair(path: tf.Tensor, size_px: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Reads a cached pair: uint8 image `[s, s, 3]` and uint8 mask `[s, s, 1]`."""
    pixels = tf.reshape(tf.io.decode_raw(tf.io.read_file(path), tf.uint8), [size_px, size_px, 4])
    return pixels[..., :3], pixels[..., 3:]


def ensure_cached(
    frame: pd.DataFrame,
    size_px: int,
    folder: str,
    load_fn: LoadFn,
    *,
    num_parallel_calls: int,
) -> tuple[np.ndarray, list[int]]:
    """Caches every pair of `frame` not cached yet; returns each row's cache file.

    A pair that cannot be decoded gets no file: reading it fails as decoding it
    would, and training skips it the same way.

    Args:
        frame: rows with `images` and `masks` paths.
        size_px: the training image size.
        folder: the cache folder (created if missing).
        load_fn: decodes and resizes one pair, as the pipeline does.
        num_parallel_calls: pairs decoded at once.

    Returns:
        `(paths, failed_rows)`: str array of cache file paths, one per row of
        `frame` in its order, and the rows that could not be decoded (logged
        with their paths).

    Raises:
        UserError: the folder cannot be written, a local folder has too little
            free space for the new files, or no pair at all could be decoded.
    """
    size_folder = os.path.join(folder, f"{size_px}px")
    images = frame["images"].astype(str).to_list()
    masks = frame["masks"].astype(str).to_list()
    names = _names(images, masks, size_px)
    paths = np.array([os.path.join(size_folder, name) for name in names], dtype=str)
    try:
        tf.io.gfile.makedirs(size_folder)
        present = set(tf.io.gfile.listdir(size_folder))
        missing = [row for row, name in enumerate(names) if name not in present]
        if not missing:
            logging.info("Data cache: all %d pairs at %d px are in %s", len(names), size_px, folder)
            return paths, []
        _check_free_space(size_folder, len(missing) * pair_bytes(size_px))
        logging.info(
            "Data cache: decoding %d of %d pairs once at %d px into %s",
            len(missing),
            len(names),
            size_px,
            folder,
        )
        started = time.monotonic()
        written = _write_missing(
            [images[row] for row in missing],
            [masks[row] for row in missing],
            [paths[row] for row in missing],
            load_fn,
            num_parallel_calls,
        )
    except (tf.errors.OpError, OSError) as error:
        reason = getattr(error, "message", None) or str(error)
        raise UserError(
            f"data cache {folder} cannot be written ({reason.splitlines()[0][:200]}); point "
            "--config.data.cache_dir at a writable disk, or turn the cache off with "
            "--config.data.cache=none"
        ) from None
    logging.info(
        "Data cache: %d pairs written in %.1f s (%.0f MiB)",
        len(written),
        time.monotonic() - started,
        len(written) * pair_bytes(size_px) / 2**20,
    )
    failed_rows = [row for index, row in enumerate(missing) if index not in written]
    _report_failures(failed_rows, images, masks, len(names))
    return paths, failed_rows


def _report_failures(failed_rows: list[int], images, masks, num_pairs: int) -> None:
    if not failed_rows:
        return
    named = "; ".join(f"{images[row]} + {masks[row]}" for row in failed_rows[:3])
    more = f" and {len(failed_rows) - 3} more" if len(failed_rows) > 3 else ""
    if len(failed_rows) == num_pairs:
        raise UserError(
            f"none of the {num_pairs} image/mask pairs could be decoded (e.g. {named}); "
            "`python -m trainer.prepare --data_root=DIR --check` lists the problems"
        )
    logging.warning(
        "Data cache: %d pairs could not be decoded and are left out: %s%s",
        len(failed_rows),
        named,
        more,
    )


def _names(images: list[str], masks: list[str], size_px: int) -> list[str]:
    """Cache file names: a hash of both files' identity and the resize."""
    with futures.ThreadPoolExecutor(max_workers=16) as pool:  # stat is I/O: on a bucket, slow
        image_stamps = list(pool.map(_stamp, images))
        mask_stamps = list(pool.map(_stamp, masks))
    names = []
    for image, image_stamp, mask, mask_stamp in zip(
        images, image_stamps, masks, mask_stamps, strict=True
    ):
        key = f"{FORMAT_VERSION}|{size_px}|{image}|{image_stamp}|{mask}|{mask_stamp}"
        names.append(hashlib.sha1(key.encode()).hexdigest()[:24] + _SUFFIX)
    return names


def _stamp(path: str) -> str:
    """Size and modification time of a file; a fixed word when it is missing."""
    try:
        if "://" not in path:
            # os.stat: TensorFlow's local stat rounds the time to whole seconds.
            stat = os.stat(path)
            return f"{stat.st_size}:{stat.st_mtime_ns}"
        stat = tf.io.gfile.stat(path)
    except (OSError, tf.errors.OpError):
        return "missing"
    return f"{stat.length}:{stat.mtime_nsec}"


def _check_free_space(folder: str, needed_bytes: int) -> None:
    if "://" in folder:
        return  # buckets have no free-space figure
    free_bytes = shutil.disk_usage(folder).free
    if free_bytes < needed_bytes * 1.05:
        raise UserError(
            f"data cache {folder} needs {needed_bytes / 2**30:.2f} GiB, only "
            f"{free_bytes / 2**30:.2f} GiB free; point --config.data.cache_dir at a larger "
            "disk, or turn the cache off with --config.data.cache=none"
        )


def _write_missing(images, masks, paths, load_fn: LoadFn, num_parallel_calls: int) -> set[int]:
    """Decodes pairs in parallel and writes each; returns the indices written."""
    dataset = tf.data.Dataset.from_tensor_slices((images, masks, tf.range(len(paths))))
    dataset = dataset.map(
        lambda image, mask, index: (*load_fn(image, mask), index),
        num_parallel_calls=num_parallel_calls,
        deterministic=False,
    )
    dataset = dataset.ignore_errors().prefetch(num_parallel_calls)
    written, last_log = set(), time.monotonic()
    for image, mask, index in dataset.as_numpy_iterator():
        _write(paths[index], np.concatenate([image, mask], axis=-1).tobytes())
        written.add(int(index))
        if time.monotonic() - last_log > _LOG_EVERY_S:
            logging.info("Data cache: %d of %d pairs written", len(written), len(paths))
            last_log = time.monotonic()
    return written


def _write(path: str, payload: bytes) -> None:
    """Writes a file so that no reader ever sees it half written."""
    if "://" in path:
        # A bucket object appears whole when its upload ends; a rename there is a copy.
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(payload)
        return
    # Unique per writer: runs sharing the folder (containers all have pid 1) may
    # cache the same pair at once; the last rename wins, with identical bytes.
    temporary = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(temporary, "wb") as f:
        f.write(payload)
    os.replace(temporary, path)
