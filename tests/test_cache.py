"""The disk cache of resized pairs: same batches as decoding, reuse, invalidation, bad input."""

import os
import shutil

import trainer  # noqa: F401
from trainer import workdir
from trainer.data import cache, pipeline
from trainer.errors import UserError

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from configs import demo_cpu


def _data_config(**overrides):
    config = demo_cpu.get_config().data
    config.image_size = 32
    config.batch_size = 4
    config.update(overrides)
    return config


def _write_pairs(root, count, *, seed=0):
    """`count` noisy pairs of odd sizes (PNG and JPEG), so that resizing matters."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        height, width = 41 + 7 * i, 57 + 3 * i
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = (rng.random((height, width)) > 0.6).astype(np.uint8) * 255
        suffix = ".jpg" if i % 3 == 0 else ".png"
        Image.fromarray(image).save(root / f"{i}{suffix}")
        Image.fromarray(mask).save(root / f"{i}_mask.png")
        rows.append(
            {
                "images": str(root / f"{i}{suffix}"),
                "masks": str(root / f"{i}_mask.png"),
                "group": "a",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def frame(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    return _write_pairs(folder, 10)


def _batches(dataset, count):
    return [[part.numpy() for part in batch] for batch in dataset.take(count)]


@pytest.mark.parametrize("training", [True, False])
def test_cached_batches_equal_decoded_ones(frame, tmp_path, training):
    config = _data_config()
    kwargs = {"training": training, "seed": 5} if training else {"training": False}
    decoded = _batches(pipeline.make_dataset(frame, config, **kwargs), 6)
    cached_rows = cache.ensure_cached(frame, 32, str(tmp_path / "cache"), num_parallel_calls=2)
    cached = _batches(pipeline.make_dataset(cached_rows, config, **kwargs), 6)
    assert len(cached) == len(decoded) > 1
    for cached_batch, decoded_batch in zip(cached, decoded, strict=True):
        for cached_part, decoded_part in zip(cached_batch, decoded_batch, strict=True):
            np.testing.assert_array_equal(cached_part, decoded_part)


def _cache_with_failures(frame, folder, size_px=32):
    return cache.ensure_cached(frame, size_px, str(folder), num_parallel_calls=2)


def _cache(frame, folder, size_px=32):
    paths = _cache_with_failures(frame, folder, size_px)[cache.COLUMN]
    assert "" not in set(paths)
    return paths.to_numpy()


def test_second_run_reuses_the_files_and_a_changed_photo_gets_a_new_one(frame, tmp_path):
    folder = tmp_path / "cache"
    first = _cache(frame, folder)
    assert len(set(first)) == len(frame) and all(os.path.getsize(p) == 32 * 32 * 4 for p in first)
    stamps = {path: os.stat(path).st_mtime_ns for path in first}

    assert list(_cache(frame, folder)) == list(first)
    assert {path: os.stat(path).st_mtime_ns for path in first} == stamps  # nothing rewritten

    changed = frame["images"][1]
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(changed, format="JPEG")
    third = _cache(frame, folder)
    assert [a == b for a, b in zip(third, first, strict=True)].count(False) == 1
    image, _ = cache.read_pair(third[1], 32)
    assert int(image.numpy().max()) == 0  # the new photo, not the stale one

    other_size = _cache(frame, folder, size_px=64)
    assert not set(other_size) & set(first)
    assert os.path.getsize(other_size[0]) == 64 * 64 * 4


def test_leftover_temporary_file_is_not_taken_for_a_pair(frame, tmp_path):
    folder = tmp_path / "cache"
    paths = _cache(frame, folder)
    os.rename(paths[0], paths[0] + ".tmp999")  # as if killed before the rename
    again = _cache(frame, folder)
    assert os.path.getsize(again[0]) == 32 * 32 * 4


def test_undecodable_pair_is_named_then_skipped_in_training_and_left_out_of_validation(
    frame, tmp_path, monkeypatch
):
    warnings = []
    monkeypatch.setattr(cache.logging, "warning", lambda *args: warnings.append(args[0] % args[1:]))
    with open(frame["images"][2], "wb") as f:
        f.write(b"not an image")
    cached = _cache_with_failures(frame, tmp_path / "cache")
    paths = cached[cache.COLUMN].to_list()
    assert [i for i, path in enumerate(paths) if not path] == [2]
    assert len(os.listdir(tmp_path / "cache" / "32px")) == len(frame) - 1
    assert all(os.path.exists(p) for i, p in enumerate(paths) if i != 2)
    assert len(warnings) == 1 and frame["images"][2] in warnings[0], warnings

    config = _data_config(augment=False)
    training = pipeline.make_dataset(cached, config, training=True, seed=0)
    assert len(np.concatenate([batch[0].numpy() for batch in training.take(5)])) == 20
    validation = pipeline.make_dataset(cached, config, training=False)
    assert sum(len(batch[0]) for batch in validation) == len(frame) - 1


def test_each_input_pipeline_caches_its_own_shard_and_reads_only_it(frame, tmp_path):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    cached = cache.ensure_cached(
        frame, 32, str(tmp_path / "cache"), num_parallel_calls=2, shard=(1, 2)
    )
    assert cached[cache.COLUMN].isna().to_list() == [i % 2 == 0 for i in range(len(frame))]
    assert len(os.listdir(tmp_path / "cache" / "32px")) == len(frame) // 2
    batches = list(pipeline.make_dataset(cached, _data_config(), context, training=False))
    assert sum(len(batch[0]) for batch in batches) == len(frame) // 2
    other = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0)
    with pytest.raises(ValueError, match="another input pipeline's shard"):
        pipeline.make_dataset(cached, _data_config(), other, training=False)


def test_no_decodable_pair_at_all_is_one_line(frame, tmp_path):
    for path in frame["masks"]:
        with open(path, "wb") as f:
            f.write(b"")
    with pytest.raises(UserError, match=r"none of the 10 image/mask pairs could be decoded"):
        _cache_with_failures(frame, tmp_path / "cache")


def test_unwritable_cache_folder_is_one_line(frame, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"a_file/cache cannot be written .*data.cache=none"):
        _cache(frame, tmp_path / "a_file" / "cache")


def test_a_file_touched_within_the_same_second_is_cached_again(frame, tmp_path):
    first = _cache(frame, tmp_path / "cache")
    stat = os.stat(frame["masks"][4])
    os.utime(frame["masks"][4], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    again = _cache(frame, tmp_path / "cache")
    assert [a == b for a, b in zip(first, again, strict=True)] == [i != 4 for i in range(10)]


def test_cache_dir_follows_the_config(tmp_path):
    assert cache.cache_dir(_data_config(cache="disk"), "/w") == os.path.join("/w", "cache")
    assert cache.cache_dir(_data_config(cache="disk", cache_dir="/fast"), "/w") == "/fast"
    assert cache.cache_dir(_data_config(cache="none"), "/w") is None
    with pytest.raises(UserError, match=r"--config.data.cache='memory' is not one of none, disk"):
        cache.cache_dir(_data_config(cache="memory"), "/w")


def test_too_little_free_space_is_one_line_before_writing(frame, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(workdir.shutil, "disk_usage", lambda _: usage)
    folder = tmp_path / "cache"
    message = (
        r"32px: the data cache needs about 40 KiB and the disk has 1000 bytes free; .*cache=none"
    )
    with pytest.raises(UserError, match=message):
        _cache(frame, folder)
    assert os.listdir(folder / "32px") == []
