"""tf.data input pipeline: manifest rows -> batches of (image, mask) per replica.

Order of operations (training):
  1. shard the file list by input pipeline (one pipeline per worker/host),
  2. an endless stream of file names, reshuffled each epoch from (seed, epoch);
     with `data.balanced` one such stream per group, sampled evenly,
  3. skip the examples a resumed run has already seen (file names only: cheap),
  4. decode and resize with TF ops in parallel (trainer/data/decode.py), or,
     when the rows carry a `cached` column (`cache.ensure_cached`), read the
     pair decoded and resized once before; under `data.resize=crop`, cut a
     random square of the scaled pair (seeded by the stream position),
  5. augment with albumentations (seeded by the example's stream position),
  6. batch at the per-replica size with `drop_remainder`, prefetch.
Validation decodes and resizes only, in file order, keeping the last partial batch.

Only file names are ever shuffled: a buffer of decoded photos (the seed's
100,000-image shuffle buffer) grows with the data set.
"""

import os

from trainer import tiling
from trainer.data import augment, cache, decode, records
from trainer.errors import UserError

import ml_collections
import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging


def pipeline_parallelism(data_config: ml_collections.ConfigDict, local_replicas: int):
    """Threads and prefetch depth for one input pipeline.

    One pipeline feeds all replicas of its host, so it may use every core of the
    host; it must keep one batch per local replica ready for each step.

    Returns:
        `(num_parallel_calls, prefetch_batches)`.
    """
    num_parallel_calls = data_config.num_parallel_calls or max(1, os.cpu_count() or 1)
    prefetch_batches = data_config.prefetch_batches or max(2, 2 * local_replicas)
    return num_parallel_calls, prefetch_batches


_PIPELINE_SALT = 1_000_003  # apart the augmentation seeds of input pipelines


def _epoch_stream(num_files: int, seed: int, salt: int) -> tf.data.Dataset:
    """Endless file indices, a fresh permutation per epoch from (seed, salt, epoch)."""

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_files, dtype=tf.int64), seed=tf.stack([seed * 1000 + salt, epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order)

    return tf.data.Dataset.range(np.iinfo(np.int64).max).flat_map(one_epoch)


def _index_stream(frame: pd.DataFrame, *, balanced: bool, seed: int) -> tf.data.Dataset:
    """Endless stream of row indices into `frame` (groups sampled evenly if balanced)."""
    if not balanced:
        return _epoch_stream(len(frame), seed, salt=0)
    streams = []
    for salt, (_, rows) in enumerate(sorted(frame.groupby("group").indices.items())):
        rows = tf.constant(np.asarray(rows, np.int64))
        streams.append(_epoch_stream(len(rows), seed, salt + 1).map(lambda i, r=rows: r[i]))
    return tf.data.Dataset.sample_from_datasets(streams, seed=seed)


# Every map function of the pipeline is graph-style code (tf.cond, tf.switch_case,
# no Python control flow on tensors). Built under `do_not_convert`, tf.data traces
# them without autograph, which would spend seconds of every run rewriting them.
@tf.autograph.experimental.do_not_convert
def make_dataset(
    frame: pd.DataFrame | records.Split,
    data_config: ml_collections.ConfigDict,
    input_context: tf.distribute.InputContext | None = None,
    *,
    training: bool,
    seed: int = 0,
    skip_examples: int = 0,
    with_weights: bool = False,
    num_classes: int = 1,
) -> tf.data.Dataset:
    """Builds the input pipeline for one input pipeline (worker) of a strategy.

    Args:
        frame: manifest rows with absolute `images` and `masks` paths and a `group`,
            or a split of a records folder (`records.read_index`); with a
            `cached` column (`cache.ensure_cached` for the same input
            pipeline), the pairs are read from the cache instead of decoded.
            `data_config.cache` is not read here: `train.train_and_evaluate`
            builds the cache; a loop of your own calls `ensure_cached` first.
        data_config: the config's `data` group (image_size, resize, batch_size,
            balanced, augment, num_parallel_calls, prefetch_batches; shuffle_buffer
            for records).
        input_context: from `strategy.distribute_datasets_from_function`; None
            means a single pipeline feeding a single replica.
        training: endless, shuffled, augmented, `drop_remainder` batches if True;
            one pass in file order otherwise.
        seed: data order and augmentation seed (the run's `train.seed`).
        skip_examples: examples of this pipeline's stream already consumed (resume).
        with_weights: validation only: pad every pipeline to the same number of
            full batches and add a float32 weight `[b]` per example, 0 for padding.
            Replicas and workers then run equal steps on static shapes (TPU,
            multi-worker), and weighted sums stay exact.
        num_classes: `model.num_classes`: 1 reads binary masks, more read label
            indices (resized nearest-neighbour); a cache must be built for the same.

    Returns:
        Batches of `(image, mask)`: image float32 `[b, s, s, 3]` in 0..1, mask
        float32 `[b, s, s, 1]` in {0, 1} (binary) or holding label indices, b the
        per-replica batch size; with `with_weights`, batches of `(image, mask, weight)`.
        Under `data.resize=crop` the examples are squares cut from the scaled
        photos (`trainer.tiling`): one random square per training example; a
        photo's validation squares one after the other, each weight then per
        pixel, `[b, s, s, 1]`, 0 where a neighbouring square counts the pixel.
    """
    input_context = input_context or tf.distribute.InputContext()
    per_replica_batch_size = input_context.get_per_replica_batch_size(data_config.batch_size)
    local_replicas = max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
    num_parallel_calls, prefetch_batches = pipeline_parallelism(data_config, local_replicas)
    examples_per_step = per_replica_batch_size * local_replicas
    reading = dict(
        training=training,
        seed=seed,
        skip_examples=skip_examples,
        with_weights=with_weights,
        num_classes=num_classes,
        examples_per_step=examples_per_step,
        num_parallel_calls=num_parallel_calls,
    )
    if isinstance(frame, records.Split):
        ds = _records_examples(frame, data_config, input_context, **reading)
    else:
        ds = _folder_examples(frame, data_config, input_context, **reading)
    cropping = data_config.resize == "crop"
    size_px = data_config.image_size
    if training:
        # prepare checked every file; one damaged since then must not end a long run.
        ds = ds.ignore_errors(log_warning=True)
        if cropping:
            ds = ds.map(_random_crop_fn(size_px), num_parallel_calls=num_parallel_calls)
        if data_config.augment:
            augment_example = _augment_fn(
                size_px,
                vertical_flip=data_config.get("vertical_flip", False),
                strength=data_config.get("augment_strength", 1.0),
            )
            ds = ds.map(augment_example, num_parallel_calls=num_parallel_calls)
        else:
            ds = ds.map(lambda image, mask, _: (image, mask))
    elif cropping:
        ds = ds.map(_validation_tiles_fn(size_px), num_parallel_calls=num_parallel_calls)
        ds = ds.unbatch()
    ds = ds.map(_to_model_inputs_keeping_weight, num_parallel_calls=num_parallel_calls)
    ds = ds.batch(per_replica_batch_size, drop_remainder=training or with_weights)
    return ds.prefetch(prefetch_batches)


def _folder_examples(
    frame: pd.DataFrame,
    data_config: ml_collections.ConfigDict,
    input_context: tf.distribute.InputContext,
    *,
    training: bool,
    seed: int,
    skip_examples: int,
    with_weights: bool,
    num_classes: int,
    examples_per_step: int,
    num_parallel_calls: int,
) -> tf.data.Dataset:
    """Decoded pairs of a manifest's rows: `(image, mask, example_seed)` when training,
    `(image, mask, weight)` with weights, `(image, mask)` otherwise; uint8, model-sized."""
    size_px = data_config.image_size
    how = decoding(data_config, num_classes)
    num_pipelines = input_context.num_input_pipelines
    num_pairs = len(frame)
    shard_size_max = -(-num_pairs // num_pipelines)
    frame = frame.iloc[input_context.input_pipeline_id :: num_pipelines].reset_index(drop=True)
    if frame.empty:
        split = "training" if training else "validation"
        raise UserError(
            f"the {split} set has {num_pairs} image/mask pairs for {num_pipelines} input "
            "pipelines (one per worker), and each needs at least one; add data or use fewer workers"
        )
    if cache.COLUMN not in frame:
        images = tf.constant(frame["images"].astype(str).to_numpy())
        masks = tf.constant(frame["masks"].astype(str).to_numpy())

        def load(index, example_seed):
            return (*decode.load_pair(images[index], masks[index], *how), example_seed)

    else:
        if frame[cache.COLUMN].isna().any():
            raise ValueError("the cache was built for another input pipeline's shard")
        if not training:
            # Training keeps undecodable rows (its stream positions must not move
            # on a resume) and skips them; evaluation simply leaves them out.
            frame = frame[frame[cache.COLUMN] != ""].reset_index(drop=True)
        cached = tf.constant(frame[cache.COLUMN].astype(str).to_numpy())

        def load(index, example_seed):
            return (*cache.read_pair(cached[index], size_px, data_config.resize), example_seed)

    if training:
        pipeline_salt = input_context.input_pipeline_id * _PIPELINE_SALT
        ds = _index_stream(frame, balanced=data_config.balanced, seed=seed)
        ds = ds.enumerate().map(lambda position, index: (index, position + pipeline_salt))
        ds = ds.skip(skip_examples)
        return ds.map(load, num_parallel_calls=num_parallel_calls)
    if with_weights:
        padded_size = -(-shard_size_max // examples_per_step) * examples_per_step
        num_real = len(frame)
        # Padding repeats a real file (cheap, always decodable) with weight 0.
        ds = tf.data.Dataset.range(padded_size).map(
            lambda i: (i % num_real, tf.cast(i < num_real, tf.float32))
        )
        return ds.map(load, num_parallel_calls=num_parallel_calls)
    ds = tf.data.Dataset.range(len(frame)).map(lambda index: (index, index))
    ds = ds.map(load, num_parallel_calls=num_parallel_calls)
    return ds.map(lambda image, mask, _: (image, mask))


def _records_examples(
    split: records.Split,
    data_config: ml_collections.ConfigDict,
    input_context: tf.distribute.InputContext,
    *,
    training: bool,
    seed: int,
    skip_examples: int,
    with_weights: bool,
    num_classes: int,
    examples_per_step: int,
    num_parallel_calls: int,
) -> tf.data.Dataset:
    """`_folder_examples` for a records split: the pairs' bytes come from its shards."""

    how = decoding(data_config, num_classes)

    def decoded(image_bytes, mask_bytes, *extra):
        return (*decode.decode_pair(image_bytes, mask_bytes, *how), *extra)

    if training:
        pipeline_salt = input_context.input_pipeline_id * _PIPELINE_SALT
        ds = records.training_examples(
            split,
            input_context,
            balanced=data_config.balanced,
            seed=seed,
            skip_examples=skip_examples,
            shuffle_buffer=data_config.shuffle_buffer,
            num_parallel_calls=num_parallel_calls,
        )
        # Positions count from the stream's start, as a folder's do.
        ds = ds.enumerate(skip_examples).map(
            lambda position, pair: (*pair, position + pipeline_salt)
        )
        return ds.map(decoded, num_parallel_calls=num_parallel_calls)
    examples, count, largest = records.evaluation_examples(split, input_context)
    if with_weights:
        padded_size = -(-largest // examples_per_step) * examples_per_step
        # Padding repeats the first pair (always decodable) with weight 0.
        real = examples.map(lambda image, mask: (image, mask, 1.0))
        padding = examples.take(1).map(lambda image, mask: (image, mask, 0.0))
        examples = real.concatenate(padding.repeat(padded_size - count))
    return examples.map(decoded, num_parallel_calls=num_parallel_calls)


def decoding(data_config: ml_collections.ConfigDict, num_classes: int) -> tuple:
    """The arguments after the bytes of `decode.decode_pair` for this data config.

    `(size_px, resize, num_classes, crop_side_px)`; configs written before
    `data.crop_scale` existed never crop.
    """
    crop_side_px = decode.crop_side_of(data_config)
    return data_config.image_size, data_config.resize, num_classes, crop_side_px


def _random_crop_fn(size_px: int):
    def crop(image, mask, example_seed):
        return (*tiling.random_crop(image, mask, example_seed, size_px), example_seed)

    return crop


def _validation_tiles_fn(size_px: int):
    """A scaled pair -> its validation squares (`tiling.validation_tiles`), as a batch.

    A weight per example becomes one per pixel: the example's times `counted`.
    """

    def tiles(image, mask, *weight):
        images, masks, counted = tiling.validation_tiles(image, mask, size_px)
        if not weight:
            return images, masks
        return images, masks, counted * weight[0]

    return tiles


def _to_model_inputs_keeping_weight(image, mask, *weight):
    return (*decode.to_model_inputs(image, mask), *weight)


def _augment_fn(size_px: int, *, vertical_flip: bool, strength: float):
    """Wraps the albumentations transforms as a tf.data map function."""
    augmenter = augment.SeededAugmenter(vertical_flip, strength)

    def augment_example(image, mask, example_seed):
        image, mask = tf.numpy_function(
            augmenter, [image, mask, example_seed], [tf.uint8, tf.uint8], stateful=False
        )
        image.set_shape([size_px, size_px, 3])
        mask.set_shape([size_px, size_px, 1])
        return image, mask

    return augment_example


def log_parallelism(data_config: ml_collections.ConfigDict, local_replicas: int) -> None:
    """Logs the pipeline parallelism chosen for this host."""
    num_parallel_calls, prefetch_batches = pipeline_parallelism(data_config, local_replicas)
    logging.info(
        "Input pipeline: %d parallel calls, %d batches prefetched (%d CPUs, %d local replicas)",
        num_parallel_calls,
        prefetch_batches,
        os.cpu_count() or 1,
        local_replicas,
    )
