"""Sharded TFRecord files of a data set's pairs: one folder for millions of photos.

  python -m trainer.prepare --data_root=DIR --records=OUT [--num_shards=N]

writes the manifests' pairs (checked as `prepare` checks them) to `OUT`:

  OUT/records.json                          the index (`INDEX_FILE`)
  OUT/train-G-00000-of-00004.tfrecord ...   the train split, shards of group G (its number)
  OUT/valid-G-00000-of-00001.tfrecord ...

Each record is a `tf.train.Example` holding the pair's files as they were
(`image` and `mask`: the encoded bytes, so any `data.image_size`, `data.resize`
and EXIF orientation is applied when they are decoded, as for a folder), the
`group`, and the original `image_path` and `mask_path` for messages. Pairs are
shuffled (seeded) before they are cut into shards, so each shard mixes the
whole split; each group gets its own shards, so balanced sampling reads one
stream per group as it does for a folder.

The index names every shard with its group and record count, the counts per
split and group, and the image size policy. Counts are known without reading a
shard: plans, padding of evaluation and resume positions come from the index.

Reading (`training_examples`, `evaluation_examples`), after TensorFlow Model
Garden's `InputReader`:
  - each input pipeline (`tf.distribute.InputContext`: one per worker or host)
    reads its own shard files, every `num_input_pipelines`-th one; where a group
    has fewer files than pipelines, every pipeline reads all of them and keeps
    every `num_input_pipelines`-th record of each;
  - files are interleaved (parallel reads), their order shuffled per epoch from
    (seed, epoch), and records shuffled within blocks of `data.shuffle_buffer`
    (seeded the same way): memory stays flat in the data set size;
  - resume is exact and cheap: epochs already done are skipped by arithmetic
    on the index's counts, and only the current epoch's records are read again
    (not decoded) to reach the position. Model Garden instead checkpoints the
    iterator; ours holds an albumentations `numpy_function`, which cannot be
    checkpointed (see DESIGN.md).
"""

import concurrent.futures
import dataclasses
import json
import math
import os

from trainer import workdir
from trainer.data import layout
from trainer.errors import UserError

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging

INDEX_FILE = "records.json"
FORMAT = "trainer-segmentation-records"
VERSION = 1
SPLITS = ("train", "valid")
IMAGE_POLICY = "original files: decoded, turned upright and resized when read"
_INTERLEAVE_FILES = 8  # shard files read at once by one input pipeline
_READ_BUFFER_BYTES = 8 << 20
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string),
    "group": tf.io.FixedLenFeature([], tf.string),
    "image_path": tf.io.FixedLenFeature([], tf.string),
    "mask_path": tf.io.FixedLenFeature([], tf.string),
}


@dataclasses.dataclass(frozen=True)
class Shard:
    """One TFRecord file: its path, the group of all its records and their count."""

    path: str
    group: str
    count: int


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a records folder, as its index describes it.

    Stands where a manifest's DataFrame stands for a folder: `len()` is its pair
    count, and `pipeline.make_dataset` reads it.
    """

    name: str
    shards: tuple[Shard, ...]

    def __len__(self) -> int:
        return sum(shard.count for shard in self.shards)

    def group_counts(self) -> dict[str, int]:
        """Pairs per group."""
        counts: dict[str, int] = {}
        for shard in self.shards:
            counts[shard.group] = counts.get(shard.group, 0) + shard.count
        return counts

    def groups(self) -> list[str]:
        """The group names, sorted as a folder's groups are."""
        return sorted(self.group_counts())

    def group_shards(self, group: str) -> list[Shard]:
        """The shards of one group, in index order."""
        return [shard for shard in self.shards if shard.group == group]


# ---------------------------------------------------------------- writing


def write_records(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    output,
    *,
    num_shards: int,
    seed: int = 0,
    num_classes: int = 1,
    ignore_label: int = 255,
    num_threads: int = 16,
    source: str | None = None,
) -> dict:
    """Writes both splits as TFRecord shards and the index; returns the index.

    Args:
        train, valid: manifests (images, masks, group), checked by `prepare`.
        output: the records folder (local or a URL); created if missing.
        num_shards: shard files of the train split; valid gets as many as its
            share of the pairs, at least one; each group at least one.
        seed: the shuffle of the pairs before they are cut into shards.
        num_classes, ignore_label: what the masks were checked for, kept in the index.
        num_threads: files read at once (on a bucket each read is a request).
        source: the data folder the pairs came from, kept in the index for messages.

    Raises:
        UserError: `num_shards` < 1, or the folder or a file cannot be read or written.
    """
    if num_shards < 1:
        raise UserError(f"--num_shards={num_shards}: give 1 or more shard files")
    output = str(layout.absolute(output))
    index = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "images": IMAGE_POLICY,
        "num_classes": num_classes,
        "ignore_label": ignore_label,
        "splits": {},
    }
    valid_shards = max(1, round(num_shards * len(valid) / max(1, len(train))))
    try:
        tf.io.gfile.makedirs(output)
        for name, frame, shards in (("train", train, num_shards), ("valid", valid, valid_shards)):
            index["splits"][name] = _write_split(name, frame, output, shards, seed, num_threads)
        workdir.write_json(os.path.join(output, INDEX_FILE), index)
    except (tf.errors.OpError, OSError) as error:
        reason = getattr(error, "message", None) or str(error)
        raise UserError(
            f"cannot write the records to {output} ({reason.splitlines()[0][:200]}); "
            "point --records at a writable folder"
        ) from None
    return index


def _write_split(name, frame, output, num_shards, seed, num_threads) -> dict:
    """Writes one split's shards, group by group; returns its part of the index."""
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    groups = sorted(frame["group"].astype(str).unique())
    shards = []
    for group_number, group in enumerate(groups):
        rows = frame[frame["group"].astype(str) == group]
        group_shards = max(1, min(len(rows), round(num_shards * len(rows) / len(frame))))
        for shard_number, part in enumerate(np.array_split(np.arange(len(rows)), group_shards)):
            file_name = (
                f"{name}-{group_number:03d}-{shard_number:05d}-of-{group_shards:05d}.tfrecord"
            )
            _write_shard(os.path.join(output, file_name), rows.iloc[part], group, num_threads)
            shards.append({"file": file_name, "group": group, "count": len(part)})
    counts = frame["group"].astype(str).value_counts()
    logging.info("records: %s: %d pairs in %d shards", name, len(frame), len(shards))
    return {
        "count": len(frame),
        "groups": {group: int(counts[group]) for group in groups},
        "shards": shards,
    }


def _write_shard(path: str, rows: pd.DataFrame, group: str, num_threads: int) -> None:
    """Writes one shard atomically (a temporary file, then a rename)."""
    images = rows["images"].astype(str).tolist()
    masks = rows["masks"].astype(str).tolist()
    temporary = workdir.temporary_path(path)
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        image_bytes = pool.map(_read_bytes, images)
        mask_bytes = pool.map(_read_bytes, masks)
        with tf.io.TFRecordWriter(temporary) as writer:
            for image_path, mask_path, image, mask in zip(
                images, masks, image_bytes, mask_bytes, strict=True
            ):
                writer.write(_example(image, mask, group, image_path, mask_path))
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as file:
        return file.read()


def _example(image: bytes, mask: bytes, group: str, image_path: str, mask_path: str) -> bytes:
    def feature(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        "image": feature(image),
        "mask": feature(mask),
        "group": feature(group.encode()),
        "image_path": feature(image_path.encode()),
        "mask_path": feature(mask_path.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


# ---------------------------------------------------------------- the index


def is_records_root(data_root) -> bool:
    """Whether `data_root` is a records folder (it holds `INDEX_FILE`)."""
    return layout.is_file(layout.join(layout.absolute(data_root), INDEX_FILE))


def not_a_folder_of_photos(data_root, command: str) -> UserError:
    """The error for a command that needs the photos' folder but was given a records folder."""
    source = None
    try:
        with tf.io.gfile.GFile(os.path.join(str(data_root), INDEX_FILE), "r") as file:
            source = json.load(file).get("source")
    except (tf.errors.OpError, OSError, ValueError, AttributeError):
        pass
    where = f" ({source})" if source else ""
    return UserError(
        f"{data_root} is a records folder (prepare --records); {command} reads the folder of "
        f"photos it was written from{where}: point --data_root there"
    )


def read_index(data_root, *, num_classes: int | None = None) -> dict[str, Split]:
    """Reads a records folder's index; returns its splits by name.

    Args:
        data_root: the records folder.
        num_classes: the run's `model.num_classes`, checked against the classes
            the masks were checked for when the records were written; None: not checked.

    Raises:
        UserError: the index is unreadable, of another format or version, lacks a
            split, names a shard file that does not exist, or was written for
            other classes.
    """
    root = str(layout.absolute(data_root))
    index_path = os.path.join(root, INDEX_FILE)
    rebuild = "write it again with `python -m trainer.prepare --data_root=DIR --records=OUT`"
    try:
        with tf.io.gfile.GFile(index_path, "r") as file:
            index = json.load(file)
    except (tf.errors.OpError, OSError, ValueError) as error:
        raise UserError(
            f"cannot read the records index {index_path} ({error}); {rebuild}"
        ) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise UserError(f"{index_path} is not a records index of this trainer; {rebuild}")
    if index.get("version") != VERSION:
        raise UserError(
            f"{index_path} is version {index.get('version')}, this trainer reads "
            f"{VERSION}; {rebuild}"
        )
    written_for = index.get("num_classes", 1)
    if num_classes is not None and written_for != num_classes:
        raise UserError(
            f"the records in {root} were checked for --num_classes={written_for}, the run has "
            f"--config.model.num_classes={num_classes}; write them again with "
            f"`python -m trainer.prepare --data_root=DIR --records=OUT --num_classes={num_classes}`"
        )
    splits = {}
    present = set(tf.io.gfile.listdir(root))
    for name in SPLITS:
        described = index.get("splits", {}).get(name)
        if not described or not described.get("shards"):
            raise UserError(f"{index_path} has no {name} split; {rebuild}")
        shards = tuple(
            Shard(os.path.join(root, shard["file"]), str(shard["group"]), int(shard["count"]))
            for shard in described["shards"]
        )
        missing = [shard.path for shard in shards if os.path.basename(shard.path) not in present]
        if missing:
            raise UserError(
                f"{index_path} lists {len(missing)} shard file(s) that do not exist, the first "
                f"{missing[0]}; copy the whole records folder, or {rebuild}"
            )
        splits[name] = Split(name, shards)
    return splits


# ---------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class _Part:
    """What one input pipeline reads of a list of shards.

    Attributes:
        paths: its shard files.
        counts: the records it keeps of each.
        every: with `offset`, it keeps records `offset, offset + every, ...` of each
            file (1 and 0 when it reads whole files).
    """

    paths: tuple[str, ...]
    counts: tuple[int, ...]
    every: int
    offset: int

    @property
    def size(self) -> int:
        return sum(self.counts)


def pipeline_part(shards: list[Shard], pipeline_id: int, num_pipelines: int) -> _Part:
    """The records of `shards` that input pipeline `pipeline_id` of `num_pipelines` reads.

    Whole files when there are at least as many files as pipelines (each reads
    every `num_pipelines`-th file), else every `num_pipelines`-th record of each
    file. Either way each record goes to exactly one pipeline.
    """
    if len(shards) >= num_pipelines:
        mine = shards[pipeline_id::num_pipelines]
        return _Part(tuple(s.path for s in mine), tuple(s.count for s in mine), 1, 0)
    counts = tuple(len(range(pipeline_id, s.count, num_pipelines)) for s in shards)
    return _Part(tuple(s.path for s in shards), counts, num_pipelines, pipeline_id)


def _parsed(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    example = tf.io.parse_single_example(serialized, _FEATURES)
    return example["image"], example["mask"]


def _file_records(path: tf.Tensor, part: _Part) -> tf.data.Dataset:
    records = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
    if part.every > 1:
        records = records.shard(part.every, part.offset)
    return records


def _read_in_order(part: _Part) -> tf.data.Dataset:
    """The part's serialized records, file after file, in index order."""
    files = tf.data.Dataset.from_tensor_slices(list(part.paths))
    return files.flat_map(lambda path: _file_records(path, part))


def _epoch_records(part: _Part, seed: int, salt: int, shuffle_buffer: int, parallel: int):
    """A function of the epoch: that epoch's serialized records of `part`, shuffled.

    The file order is a permutation from (seed, salt, epoch); files are
    interleaved a few at a time, records shuffled in blocks seeded the same way.
    """
    paths = tf.constant(list(part.paths))
    cycle_length = min(len(part.paths), _INTERLEAVE_FILES)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(part.paths), dtype=tf.int64), seed=tf.stack([seed * 1000 + salt, epoch])
        )
        files = tf.data.Dataset.from_tensor_slices(tf.gather(paths, order))
        records = files.interleave(
            lambda path: _file_records(path, part),
            cycle_length=cycle_length,
            block_length=1,
            num_parallel_calls=min(cycle_length, parallel),
            deterministic=True,
        )
        return _block_shuffled(records, shuffle_buffer, tf.stack([seed * 1000 + salt, epoch]))

    return one_epoch


def _block_shuffled(records: tf.data.Dataset, block: int, seed: tf.Tensor) -> tf.data.Dataset:
    """Records shuffled within consecutive blocks of `block`, each by a stateless seed.

    `Dataset.shuffle` takes no tensor seed, and a seed per epoch is what makes
    the order reproducible on resume; a permutation of each block (at most
    `block` records held) does the same job with the same bounded memory.
    """

    def shuffled(number, records_of_block):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(records_of_block, out_type=tf.int64)[0]),
            seed=tf.stack([seed[0] * 7919 + seed[1], number]),
        )
        return tf.data.Dataset.from_tensor_slices(tf.gather(records_of_block, order))

    return records.batch(block).enumerate().flat_map(shuffled)


def _endless(part, seed, salt, shuffle_buffer, parallel, skip: int) -> tf.data.Dataset:
    """The part's records, epoch after epoch, starting `skip` records in.

    Whole epochs are skipped by arithmetic; only the rest is read (not decoded).
    """
    first_epoch, within = divmod(skip, part.size)
    epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    records = epochs.flat_map(_epoch_records(part, seed, salt, shuffle_buffer, parallel))
    return records.skip(within)


_CHOICE_BLOCK = 4096


def _group_choices(num_groups: int, seed: int) -> tf.data.Dataset:
    """Endless group indices, uniform, in blocks from (seed, block): countable without reading."""

    def block(number):
        return tf.data.Dataset.from_tensor_slices(
            tf.random.stateless_uniform(
                [_CHOICE_BLOCK], seed=tf.stack([seed, number]), maxval=num_groups, dtype=tf.int64
            )
        )

    return tf.data.Dataset.range(np.iinfo(np.int64).max).flat_map(block)


def _choices_per_group(num_groups: int, seed: int, positions: int) -> list[int]:
    """How many of the first `positions` choices of `_group_choices` went to each group."""
    counts = np.zeros(num_groups, np.int64)
    full_blocks, rest = divmod(positions, _CHOICE_BLOCK)
    for number in range(full_blocks + (1 if rest else 0)):
        drawn = tf.random.stateless_uniform(
            [_CHOICE_BLOCK],
            seed=tf.constant([seed, number], tf.int64),
            maxval=num_groups,
            dtype=tf.int64,
        ).numpy()
        if number == full_blocks:
            drawn = drawn[:rest]
        counts += np.bincount(drawn, minlength=num_groups)
    return counts.tolist()


def training_examples(
    split: Split,
    input_context: tf.distribute.InputContext,
    *,
    balanced: bool,
    seed: int,
    skip_examples: int,
    shuffle_buffer: int,
    num_parallel_calls: int,
) -> tf.data.Dataset:
    """This input pipeline's endless stream of `(image_bytes, mask_bytes)`, after `skip_examples`.

    With `balanced`, one stream per group, each picked with equal chance;
    otherwise one stream over every shard. The same (split, seed, pipeline)
    always gives the same stream, so a resumed run continues where it stopped.

    Raises:
        UserError: this pipeline would get no records.
    """
    pipeline_id, num_pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
    reading = (shuffle_buffer, num_parallel_calls)
    if not balanced:
        part = _checked_part(list(split.shards), split, pipeline_id, num_pipelines)
        records = _endless(part, seed, 0, *reading, skip=skip_examples)
    else:
        _checked_part(list(split.shards), split, pipeline_id, num_pipelines)
        # A group too small to reach this pipeline is left out of its draws, as
        # a folder's pipeline samples only the groups of its rows.
        parts = {
            salt: pipeline_part(split.group_shards(group), pipeline_id, num_pipelines)
            for salt, group in enumerate(split.groups(), start=1)
        }
        parts = {salt: part for salt, part in parts.items() if part.size}
        taken = _choices_per_group(len(parts), seed, skip_examples)
        streams = [
            _endless(part, seed, salt, *reading, skip=count)
            for (salt, part), count in zip(parts.items(), taken, strict=True)
        ]
        choices = _group_choices(len(parts), seed).skip(skip_examples)
        records = tf.data.Dataset.choose_from_datasets(streams, choices)
    return records.map(_parsed, num_parallel_calls=num_parallel_calls)


def _checked_part(shards, split: Split, pipeline_id: int, num_pipelines: int) -> _Part:
    part = pipeline_part(shards, pipeline_id, num_pipelines)
    _check_part(part, shards, split, num_pipelines)
    return part


def _check_part(part: _Part, shards, split: Split, num_pipelines: int) -> None:
    """Raises UserError when an input pipeline's part of `shards` holds no record."""
    if part.size == 0:
        raise UserError(
            f"the {split.name} records have {sum(s.count for s in shards)} pairs"
            f"{' in group ' + shards[0].group if shards else ''} for {num_pipelines} input "
            "pipelines (one per worker), and each needs at least one; add data or use fewer workers"
        )


def evaluation_examples(
    split: Split, input_context: tf.distribute.InputContext
) -> tuple[tf.data.Dataset, int, int]:
    """This pipeline's share of the split, once, in index order.

    Returns:
        `(examples, count, largest)`: a dataset of `(image_bytes, mask_bytes)`,
        its count, and the largest count of any pipeline (to pad to equal steps).
    """
    num_pipelines = input_context.num_input_pipelines
    parts = [pipeline_part(list(split.shards), k, num_pipelines) for k in range(num_pipelines)]
    part = parts[input_context.input_pipeline_id]
    _check_part(part, list(split.shards), split, num_pipelines)
    examples = _read_in_order(part).map(_parsed)
    return examples, part.size, max(p.size for p in parts)


def record_keys(split: Split) -> pd.DataFrame:
    """One row per record in index order: `shard` path, `position` in it, `group`.

    Read from the index alone, no shard is opened; the data cache names its files by these.
    """
    shard_paths, positions, groups = [], [], []
    for shard in split.shards:
        shard_paths += [shard.path] * shard.count
        positions += range(shard.count)
        groups += [shard.group] * shard.count
    return pd.DataFrame({"shard": shard_paths, "position": positions, "group": groups})


def read_records(split: Split, rows: list[int]) -> tf.data.Dataset:
    """`(row, image_bytes, mask_bytes, image_path)` of the given rows of `record_keys(split)`.

    Reads only the shards that hold them, each whole, once.
    """
    rows = np.unique(np.asarray(rows, np.int64))
    starts = np.cumsum([0] + [shard.count for shard in split.shards])
    holding = np.unique(np.searchsorted(starts, rows, side="right") - 1)
    chosen = [(number, split.shards[number]) for number in holding]
    # One lookup per record, whatever the number of rows wanted.
    wanted_rows = np.zeros(len(split), bool)
    wanted_rows[rows] = True
    wanted = tf.constant(wanted_rows)

    def shard_rows(path, first_row):
        records = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
        return records.enumerate(first_row)

    def is_wanted(row, _):
        return wanted[row]

    def parsed(row, serialized):
        example = tf.io.parse_single_example(serialized, _FEATURES)
        return row, example["image"], example["mask"], example["image_path"]

    files = tf.data.Dataset.from_tensor_slices(
        ([shard.path for _, shard in chosen], np.array([starts[n] for n, _ in chosen], np.int64))
    )
    return files.flat_map(shard_rows).filter(is_wanted).map(parsed)


def sample_pairs(split: Split, count: int) -> list[tuple[bytes, bytes, str]]:
    """Up to `count` pairs spread evenly over the split: `(image, mask, image_path)`."""
    chosen = np.unique(np.linspace(0, len(split) - 1, num=min(count, len(split))).round())
    pairs = read_records(split, chosen.astype(int).tolist()).as_numpy_iterator()
    return [(image, mask, path.decode()) for _, image, mask, path in pairs]


def shard_count_hint(num_pairs: int) -> int:
    """A default shard count: about 1000 pairs (100-200 MB of photos) a shard, at least 1."""
    return max(1, math.ceil(num_pairs / 1000))
