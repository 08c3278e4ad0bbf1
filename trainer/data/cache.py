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
import time
from concurrent import futures

from trainer import workdir
from trainer.data import decode, records
from trainer.errors import UserError

import ml_collections
import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging

MODES = ("none", "disk")
# Bump when the decode/resize code changes what a cached pair holds.
FORMAT_VERSION = 6  # 6: photos enlarged by plain bilinear (resize_image)
_SUFFIX = ".pair"
_LOG_EVERY_S = 15.0
_HEADER_BYTES = 8  # a cropped pair's int32 height and width
# The column `ensure_cached` adds to a manifest: each row's cache file.
COLUMN = "cached"


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


def _expected_pair_bytes(size_px: int, how: tuple) -> int:
    """About the bytes of a cached pair; a cropped one as if its photo were 4:3."""
    resize, _, crop_side_px = how
    if resize == "crop":
        return crop_side_px * crop_side_px * 4 * 4 // 3
    return pair_bytes(size_px)


def read_pair(
    path: tf.Tensor, size_px: int, resize: str = "stretch"
) -> tuple[tf.Tensor, tf.Tensor]:
    """Reads a cached pair: uint8 image `[s, s, 3]` and uint8 mask `[s, s, 1]`.

    Under `resize="crop"` the pair has its scaled photo's own `[h, w]`, stored
    in front of the pixels as two little-endian int32.
    """
    content = tf.io.read_file(path)
    if resize == "crop":
        size = tf.io.decode_raw(tf.strings.substr(content, 0, _HEADER_BYTES), tf.int32)
        raw = tf.strings.substr(content, _HEADER_BYTES, -1)
        pixels = tf.reshape(tf.io.decode_raw(raw, tf.uint8), tf.concat([size, [4]], axis=0))
    else:
        pixels = tf.reshape(tf.io.decode_raw(content, tf.uint8), [size_px, size_px, 4])
    return pixels[..., :3], pixels[..., 3:]


def ensure_cached(
    frame: pd.DataFrame | records.Split,
    size_px: int,
    folder: str,
    *,
    num_parallel_calls: int,
    shard: tuple[int, int] = (0, 1),
    resize: str = "stretch",
    num_classes: int = 1,
    crop_side_px: int = 0,
) -> pd.DataFrame:
    """Caches the pairs of this input pipeline's shard not cached yet.

    The shard is every `num_shards`-th row from `shard_index`, as
    `pipeline.make_dataset` reads it for the same input pipeline; other hosts
    cache their own shards. A pair that cannot be decoded gets no file.

    Args:
        frame: manifest rows with `images` and `masks` paths, or a records
            split (see `_ensure_cached_records` for what it gives).
        size_px: the training image size.
        folder: the cache folder (created if missing).
        num_parallel_calls: pairs decoded at once.
        shard: `(shard_index, num_shards)`: the input pipeline this host runs.
        resize: the config's `data.resize` (`decode.RESIZE_MODES`).
        num_classes: `model.num_classes`: binary masks (1) or label indices, cached apart.
        crop_side_px: `resize="crop"` only: the short side pairs are scaled to
            (`decode.crop_side`); they are cached at that scale, whole.

    Returns:
        A copy of `frame` with a column `COLUMN`: the cache file of each row of
        the shard, "" for a pair that could not be decoded (logged with its
        paths), None for rows of other shards.

    Raises:
        UserError: the folder cannot be written, a local folder has too little
            free space for the new files, or no pair at all could be decoded.
    """
    if isinstance(frame, records.Split):
        return _ensure_cached_records(
            frame,
            size_px,
            folder,
            num_parallel_calls=num_parallel_calls,
            shard=shard,
            resize=resize,
            num_classes=num_classes,
            crop_side_px=crop_side_px,
        )
    shard_index, num_shards = shard
    rows = np.arange(shard_index, len(frame), num_shards)
    images = frame["images"].astype(str).to_numpy()[rows].tolist()
    masks = frame["masks"].astype(str).to_numpy()[rows].tolist()
    geometry = _geometry(size_px, resize, num_classes, crop_side_px)
    names = _names(images, masks, geometry)

    def build(paths, missing):
        how = (resize, num_classes, crop_side_px)
        return _build(images, masks, paths, missing, size_px, how, num_parallel_calls)

    cached = _ensure(
        names, _size_folder(folder, size_px, resize, crop_side_px), build, folder, size_px
    )
    _report_failures([i for i, path in enumerate(cached) if not path], images, masks, len(names))
    column = np.full(len(frame), None, dtype=object)
    column[rows] = cached
    return frame.assign(**{COLUMN: column})


def _ensure_cached_records(
    split: records.Split,
    size_px: int,
    folder: str,
    *,
    num_parallel_calls: int,
    shard: tuple[int, int] = (0, 1),
    resize: str = "stretch",
    num_classes: int = 1,
    crop_side_px: int = 0,
) -> pd.DataFrame:
    """`ensure_cached` for a records split: its pairs cached, as a manifest to train from.

    Cache files are named by the shard file's identity and the record's position
    in it, so that a run finding its cache complete opens no shard. Reading
    the rows it misses reads the shards that hold them, each once.

    Returns:
        One row per record in index order (`records.record_keys`): `images` and
        `masks` both `SHARD#POSITION` (for messages), `group`, and the `COLUMN`
        of this input pipeline's rows, as `ensure_cached` gives for a manifest.
    """
    shard_index, num_shards = shard
    keys = records.record_keys(split)
    rows = np.arange(shard_index, len(keys), num_shards)
    stamps = {path: _stamp(path) for path in keys["shard"].unique()}
    geometry = _geometry(size_px, resize, num_classes, crop_side_px)
    every_label = [f"{path}#{position}" for path, position in zip(keys["shard"], keys["position"])]
    shard_paths = keys["shard"].to_numpy()[rows]
    labels = [every_label[row] for row in rows]
    names = [
        _hashed(f"{FORMAT_VERSION}|{geometry}|record|{label}|{stamps[path]}")
        for label, path in zip(labels, shard_paths)
    ]

    def build(paths, missing):
        chosen = rows[missing]
        chosen_rows = tf.constant(chosen, tf.int64)  # sorted, as `missing` is

        def read(row, image, mask, _):
            return image, mask, tf.searchsorted(chosen_rows, tf.reshape(row, [1]))[0]

        pairs = records.read_records(split, chosen.tolist())
        how = (resize, num_classes, crop_side_px)
        return _build_from(pairs, read, paths, missing, size_px, how, num_parallel_calls)

    cached = _ensure(
        names, _size_folder(folder, size_px, resize, crop_side_px), build, folder, size_px
    )
    _report_failures([i for i, path in enumerate(cached) if not path], labels, labels, len(names))
    column = np.full(len(keys), None, dtype=object)
    column[rows] = cached
    return pd.DataFrame(
        {"images": every_label, "masks": every_label, "group": keys["group"], COLUMN: column}
    )


def _size_folder(folder: str, size_px: int, resize: str, crop_side_px: int) -> str:
    how = {"stretch": "", "crop": f"_crop{crop_side_px}"}.get(resize, f"_{resize}")
    return os.path.join(folder, f"{size_px}px{how}")


def _geometry(size_px: int, resize: str, num_classes: int, crop_side_px: int) -> str:
    # Binary entries keep the key they had before label masks existed.
    labels = "" if num_classes == 1 else f"|labels{num_classes}"
    scale = f"{crop_side_px}" if resize == "crop" else ""
    return f"{size_px}|{resize}{scale}{labels}"


def _ensure(names: list[str], size_folder: str, build, folder: str, size_px: int) -> list[str]:
    """Builds the cache files of `names` not in `size_folder` yet.

    Args:
        build: `(paths, missing) -> failed`: writes the files of the `missing`
            indices, returns those that could not be decoded.

    Returns:
        Each name's cache file, "" for a pair that could not be decoded.
    """
    paths = [os.path.join(size_folder, name) for name in names]
    try:
        tf.io.gfile.makedirs(size_folder)
        present = set(tf.io.gfile.listdir(size_folder))
        missing = [index for index, name in enumerate(names) if name not in present]
        failed = []
        if missing:
            failed = build(paths, missing)
        else:
            logging.info("Data cache: all %d pairs at %d px are in %s", len(names), size_px, folder)
    except (tf.errors.OpError, OSError) as error:
        reason = getattr(error, "message", None) or str(error)
        raise UserError(
            f"data cache {folder} cannot be written ({reason.splitlines()[0][:200]}); point "
            "--config.data.cache_dir at a writable disk, or turn the cache off with "
            "--config.data.cache=none"
        ) from None
    failed_set = set(failed)
    return [("" if index in failed_set else path) for index, path in enumerate(paths)]


def _build(images, masks, paths, missing, size_px, how, num_parallel_calls) -> list[int]:
    """Decodes and writes the `missing` pairs of files; returns those that could not be decoded."""
    dataset = tf.data.Dataset.from_tensor_slices(
        (
            [images[index] for index in missing],
            [masks[index] for index in missing],
            tf.range(len(missing), dtype=tf.int64),
        )
    )
    return _build_from(dataset, _read_files, paths, missing, size_px, how, num_parallel_calls)


def _read_files(image_path, mask_path, position):
    return tf.io.read_file(image_path), tf.io.read_file(mask_path), position


def _build_from(pairs, read, paths, missing, size_px, how, num_parallel_calls) -> list[int]:
    """Decodes and writes the `missing` pairs; returns those that could not be decoded.

    Args:
        pairs: one element per missing row, ending in its position in `missing`.
        read: element -> `(image_bytes, mask_bytes, position)`, run in parallel.
        paths: every row's cache file.
        missing: the rows to write.
        how: `(resize, num_classes, crop_side_px)`, as `decode.decode_pair` takes them.
    """
    workdir.check_free_space(
        os.path.dirname(paths[0]),
        len(missing) * _expected_pair_bytes(size_px, how),
        what="the data cache",
        fix="point --config.data.cache_dir at a larger disk, or turn the cache off with "
        "--config.data.cache=none",
    )
    logging.info(
        "Data cache: decoding %d of %d pairs once at %d px into %s",
        len(missing),
        len(paths),
        size_px,
        os.path.dirname(os.path.dirname(paths[0])),
    )
    started = time.monotonic()
    written = _write_decoded(
        pairs, read, [paths[index] for index in missing], size_px, how, num_parallel_calls
    )
    logging.info(
        "Data cache: %d pairs written in %.1f s (%.0f MiB)",
        len(written),
        time.monotonic() - started,
        len(written) * _expected_pair_bytes(size_px, how) / 2**20,
    )
    return [index for position, index in enumerate(missing) if position not in written]


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


def _names(images: list[str], masks: list[str], geometry: str) -> list[str]:
    """Cache file names: a hash of both files' identity and the resize."""
    with futures.ThreadPoolExecutor(max_workers=16) as pool:  # stat is I/O: on a bucket, slow
        image_stamps = list(pool.map(_stamp, images))
        mask_stamps = list(pool.map(_stamp, masks))
    names = []
    for image, image_stamp, mask, mask_stamp in zip(
        images, image_stamps, masks, mask_stamps, strict=True
    ):
        names.append(
            _hashed(f"{FORMAT_VERSION}|{geometry}|{image}|{image_stamp}|{mask}|{mask_stamp}")
        )
    return names


def _hashed(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:24] + _SUFFIX


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


@tf.autograph.experimental.do_not_convert  # graph-style map functions: see pipeline.make_dataset
def _write_decoded(pairs, read, paths, size_px, how, num_parallel_calls) -> set[int]:
    """Decodes pairs in parallel and writes each to its path; returns the indices written.

    `read` turns an element of `pairs` into `(image_bytes, mask_bytes, index)`,
    the index into `paths`; an element that fails is left out, never shifting
    the others. `how` is `(resize, num_classes, crop_side_px)`, as `decode.decode_pair`
    takes them.
    """

    def load(*element):
        image_bytes, mask_bytes, index = read(*element)
        return (*decode.decode_pair(image_bytes, mask_bytes, size_px, *how), index)

    dataset = pairs.map(
        load,
        num_parallel_calls=num_parallel_calls,
        deterministic=False,
    )
    dataset = dataset.ignore_errors().prefetch(num_parallel_calls)
    written, last_log = set(), time.monotonic()
    for image, mask, index in dataset.as_numpy_iterator():
        # Atomic: runs sharing the folder may cache the same pair at once, with
        # identical bytes; a killed run leaves no half file.
        content = np.concatenate([image, mask], axis=-1).tobytes()
        if how[0] == "crop":
            content = np.asarray(image.shape[:2], "<i4").tobytes() + content
        workdir.write_bytes(paths[index], content)
        written.add(int(index))
        if time.monotonic() - last_log > _LOG_EVERY_S:
            logging.info("Data cache: %d of %d pairs written", len(written), len(paths))
            last_log = time.monotonic()
    return written
