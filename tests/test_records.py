"""Sharded TFRecord folders (`prepare --records`): written once, read by every input pipeline.

Pairs are photos of one colour each: the red channel holds the pair's number,
so each example is followed from the shard files to the batches.
"""

import json
import os
import shutil

import trainer  # noqa: F401  (Keras 2 before TensorFlow loads)
from trainer import checkpoint, evaluate, train
from trainer.data import cache, pipeline, records
from trainer.errors import UserError

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tests.files import one_device

SIZE_PX = 32
NUM_PAIRS = 30


def _write_pairs(folder, num_pairs: int) -> pd.DataFrame:
    """Pairs whose photos are one colour each; groups "a" (2/3) and "b" (1/3)."""
    rows = []
    for index in range(num_pairs):
        image, mask = folder / f"{index:02d}.png", folder / f"{index:02d}_mask.png"
        Image.fromarray(np.full((12, 16, 3), (index * 8, 128, 200), np.uint8)).save(image)
        pixels = np.zeros((12, 16), np.uint8)
        pixels[: 1 + index % 10] = 255
        Image.fromarray(pixels).save(mask)
        rows.append((str(image), str(mask), "b" if index % 3 == 2 else "a"))
    return pd.DataFrame(rows, columns=["images", "masks", "group"])


def _numbers(images) -> list[int]:
    """The pair each image `[b, s, s, 3]` (0..1 floats or uint8) came from."""
    images = np.asarray(images, np.float32)
    scale = 255.0 if images.max() <= 1.0 else 1.0
    return [int(round(v * scale / 8.0)) for v in images[:, SIZE_PX // 2, SIZE_PX // 2, 0]]


def _data_config(**changes):
    from configs import demo_cpu

    data = demo_cpu.get_config().data
    data.image_size = SIZE_PX
    data.batch_size = 2
    data.augment = False
    data.shuffle_buffer = 4
    data.update(changes)
    return data


def _context(pipeline_id: int, num_pipelines: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(
        num_input_pipelines=num_pipelines,
        input_pipeline_id=pipeline_id,
        num_replicas_in_sync=num_pipelines,
    )


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    pairs = _write_pairs(tmp_path_factory.mktemp("pairs"), NUM_PAIRS + 6)
    return pairs.iloc[:NUM_PAIRS].reset_index(drop=True), pairs.iloc[NUM_PAIRS:]


@pytest.fixture(scope="module")
def records_root(frames, tmp_path_factory):
    """6 train shards (4 of group a, 2 of b) and 1 valid shard per group."""
    root = str(tmp_path_factory.mktemp("records"))
    records.write_records(*frames, root, num_shards=6)
    return root


def test_the_index_counts_every_pair_per_split_group_and_shard(frames, records_root):
    with open(os.path.join(records_root, records.INDEX_FILE)) as file:
        index = json.load(file)
    train_index = index["splits"]["train"]
    assert train_index["count"] == NUM_PAIRS
    assert train_index["groups"] == {"a": 20, "b": 10}
    assert sum(shard["count"] for shard in train_index["shards"]) == NUM_PAIRS
    assert len(train_index["shards"]) == 6
    assert index["splits"]["valid"]["count"] == 6
    assert index["images"] == records.IMAGE_POLICY
    splits = records.read_index(records_root)
    assert len(splits["train"]) == NUM_PAIRS
    assert splits["train"].group_counts() == {"a": 20, "b": 10}
    # Each record keeps its files' bytes and where they came from.
    first = next(iter(tf.data.TFRecordDataset(splits["train"].shards[0].path)))
    example = tf.train.Example.FromString(first.numpy()).features.feature
    image_path = example["image_path"].bytes_list.value[0].decode()
    with open(image_path, "rb") as file:
        assert example["image"].bytes_list.value[0] == file.read()
    assert example["group"].bytes_list.value[0] == b"a"


def _part_numbers(part) -> list[int]:
    return [
        int(round(tf.io.decode_png(image)[0, 0, 0].numpy() / 8))
        for serialized in records._read_in_order(part)
        for image in [records._parsed(serialized)[0]]
    ]


@pytest.mark.parametrize("num_pipelines", [1, 2, 3, 4], ids=lambda n: f"{n}_pipelines")
def test_every_pair_goes_to_exactly_one_pipeline_and_group_stream(records_root, num_pipelines):
    # 4 shards of a, 2 of b: 3 and 4 pipelines share b's files record by record.
    split = records.read_index(records_root)["train"]
    whole, by_group = [], []
    for pipeline_id in range(num_pipelines):
        whole += _part_numbers(
            records.pipeline_part(list(split.shards), pipeline_id, num_pipelines)
        )
        for group in split.groups():
            part = records.pipeline_part(split.group_shards(group), pipeline_id, num_pipelines)
            numbers = _part_numbers(part)
            assert len(numbers) == part.size
            assert {("b" if n % 3 == 2 else "a") for n in numbers} <= {group}
            by_group += numbers
    assert sorted(whole) == list(range(NUM_PAIRS))
    assert sorted(by_group) == list(range(NUM_PAIRS))


@pytest.mark.parametrize("num_pipelines", [1, 4], ids=lambda n: f"{n}_pipelines")
def test_each_training_epoch_reads_a_pipelines_pairs_once_in_a_new_order(
    records_root, num_pipelines
):
    split = records.read_index(records_root)["train"]
    for pipeline_id in range(num_pipelines):
        part = records.pipeline_part(list(split.shards), pipeline_id, num_pipelines)
        stream = records.training_examples(
            split,
            _context(pipeline_id, num_pipelines),
            balanced=False,
            seed=3,
            skip_examples=0,
            shuffle_buffer=4,
            num_parallel_calls=2,
        )
        images = [tf.io.decode_png(image).numpy() for image, _ in stream.take(2 * part.size)]
        numbers = [int(round(image[0, 0, 0] / 8)) for image in images]
        assert sorted(numbers[: part.size]) == sorted(_part_numbers(part))
        assert sorted(numbers[part.size :]) == sorted(numbers[: part.size])
        assert numbers[part.size :] != numbers[: part.size]


def test_balanced_sampling_draws_the_groups_evenly(records_root):
    split = records.read_index(records_root)["train"]
    dataset = pipeline.make_dataset(
        split, _data_config(balanced=True), training=True, seed=1
    ).unbatch()
    numbers = [_numbers(image[None])[0] for image, _ in dataset.take(400)]
    share_b = np.mean([n % 3 == 2 for n in numbers])
    assert 0.42 < share_b < 0.58  # a third of the pairs, half of the draws


def test_a_group_too_small_for_every_pipeline_is_left_out_of_that_pipelines_draws(frames, tmp_path):
    train = frames[0].assign(group=["c"] + ["a"] * (NUM_PAIRS - 1))  # c: one pair
    records.write_records(train, frames[1], str(tmp_path), num_shards=2)
    split = records.read_index(str(tmp_path))["train"]
    numbers = []
    for pipeline_id in range(2):
        stream = pipeline.make_dataset(
            split,
            _data_config(balanced=True, batch_size=4),
            _context(pipeline_id, 2),
            training=True,
        ).unbatch()
        numbers.append({_numbers(image[None])[0] for image, _ in stream.take(60)})
    # Pair 0 (group c) reaches one pipeline, often: half of its draws.
    assert (0 in numbers[0]) != (0 in numbers[1])
    assert numbers[0] | numbers[1] == set(range(NUM_PAIRS))


@pytest.mark.parametrize("balanced", [False, True], ids=["plain", "balanced"])
def test_a_resumed_stream_continues_the_uninterrupted_one_exactly(records_root, balanced):
    # Skipping 37 examples crosses an epoch (30 pairs); with augmentation on,
    # the pictures match only if each example keeps its stream position.
    split = records.read_index(records_root)["train"]
    config = _data_config(augment=True, balanced=balanced)
    whole = pipeline.make_dataset(split, config, training=True, seed=5).unbatch()
    resumed = pipeline.make_dataset(split, config, training=True, seed=5, skip_examples=37)
    expected = [image.numpy() for image, _ in whole.take(37 + 12)][37:]
    actual = [image.numpy() for image, _ in resumed.unbatch().take(12)]
    for expected_image, actual_image in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(expected_image, actual_image)


def test_validation_pipelines_run_equal_steps_and_weigh_every_pair_once(records_root):
    split = records.read_index(records_root)["train"]  # 6 files, 4 pipelines
    num_batches, weighted = [], []
    for pipeline_id in range(4):
        dataset = pipeline.make_dataset(
            split,
            _data_config(batch_size=8),
            _context(pipeline_id, 4),
            training=False,
            with_weights=True,
        )
        batches = list(dataset)
        num_batches.append(len(batches))
        for images, _, weights in batches:
            assert images.shape[0] == 2
            weighted += [n for n, w in zip(_numbers(images), weights.numpy()) if w == 1.0]
    assert len(set(num_batches)) == 1
    assert sorted(weighted) == list(range(NUM_PAIRS))


def test_records_decode_as_the_folder_does(frames, records_root):
    split = records.read_index(records_root)["valid"]
    from_records = list(pipeline.make_dataset(split, _data_config(), training=False).unbatch())
    folder = pipeline.make_dataset(frames[1], _data_config(), training=False).unbatch()
    by_number = {_numbers(image[None])[0]: (image, mask) for image, mask in folder}
    assert len(from_records) == 6
    for image, mask in from_records:
        expected_image, expected_mask = by_number[_numbers(image[None])[0]]
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(mask, expected_mask)


def test_the_cache_of_records_serves_the_same_pairs_and_opens_no_shard_the_second_time(
    records_root, tmp_path, monkeypatch
):
    split = records.read_index(records_root)["train"]
    cached = cache.ensure_cached(split, SIZE_PX, str(tmp_path), num_parallel_calls=2, shard=(1, 2))
    assert len(cached) == NUM_PAIRS
    mine = cached.iloc[1::2]
    assert mine[cache.COLUMN].str.endswith(".pair").all()
    assert cached.iloc[0::2][cache.COLUMN].isna().all()
    # Row k of the cache is record k of the index: the same pair as read from its shard.
    keys = records.record_keys(split)
    for row in (1, 17, 29):
        image, _ = cache.read_pair(tf.constant(cached[cache.COLUMN].iloc[row]), SIZE_PX)
        pair = next(iter(records.read_records(split, [row])))
        assert int(pair[0]) == row
        assert _numbers(image.numpy()[None])[0] == int(
            round(tf.io.decode_png(pair[1])[0, 0, 0].numpy() / 8)
        )
        assert cached["group"].iloc[row] == keys["group"].iloc[row]

    mine = set(_numbers_of_rows(split, range(1, NUM_PAIRS, 2)))

    def no_reading(*args, **kwargs):
        raise AssertionError("a complete cache read a shard")

    monkeypatch.setattr(records, "read_records", no_reading)
    again = cache.ensure_cached(split, SIZE_PX, str(tmp_path), num_parallel_calls=2, shard=(1, 2))
    pd.testing.assert_frame_equal(again, cached)
    batches = pipeline.make_dataset(again, _data_config(), _context(1, 2), training=True)
    numbers = {n for images, _ in batches.take(8) for n in _numbers(images)}
    assert numbers <= mine


def _numbers_of_rows(split, rows) -> list[int]:
    return [
        int(round(tf.io.decode_png(image)[0, 0, 0].numpy() / 8))
        for _, image, _, _ in records.read_records(split, list(rows))
    ]


def test_a_records_folder_in_a_bucket_is_read_in_place(frames):
    root = "ram://records_test/records"
    records.write_records(*frames, root, num_shards=3)
    split = records.read_index(root)["train"]
    images, masks = next(iter(pipeline.make_dataset(split, _data_config(), training=True)))
    assert images.shape == (2, SIZE_PX, SIZE_PX, 3)
    assert set(np.unique(masks)) <= {0.0, 1.0}


def test_evaluate_points_from_records_to_the_photos_they_came_from(records_root):
    with pytest.raises(UserError, match="evaluate reads the folder of photos"):
        evaluate.select_rows(records_root, "valid", fallback_dir=None)


def test_a_damaged_index_names_the_file_and_the_fix(records_root, tmp_path):
    index_path = os.path.join(records_root, records.INDEX_FILE)
    with open(index_path) as file:
        index = json.load(file)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(records_root):
        if name != records.INDEX_FILE:
            os.symlink(os.path.join(records_root, name), broken / name)

    def read_with(changed: dict) -> str:
        (broken / records.INDEX_FILE).write_text(json.dumps(changed))
        with pytest.raises(UserError) as raised:
            records.read_index(str(broken), num_classes=1)
        return str(raised.value)

    assert "is version 99" in read_with(dict(index, version=99))
    missing = json.loads(json.dumps(index))
    missing["splits"]["train"]["shards"][0]["file"] = "gone.tfrecord"
    assert "gone.tfrecord" in read_with(missing)
    assert "--num_classes=3" in read_with(dict(index, num_classes=3))
    assert "--records=OUT" in read_with({"format": "other"})


@pytest.mark.slow
def test_training_from_records_stopped_and_resumed_ends_with_the_uninterrupted_weights(
    records_root, tiny_config, tmp_path, monkeypatch
):
    def run(workdir, steps):
        config = tiny_config(
            data__cache="none", data__augment=True, train__steps=steps, train__checkpoint_every=2
        )
        config.data.shuffle_buffer = 8
        return train.train_and_evaluate(
            config, workdir=str(workdir), data_root=records_root, strategy=one_device()
        )

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run(whole, 6)["step"] == 6
    # A run killed after its step-4 checkpoint: the same work directory without step 6.
    shutil.copytree(whole, resumed)
    checkpoints = str(resumed / "checkpoints")
    for path in tf.io.gfile.glob(os.path.join(checkpoints, "ckpt-6*")):
        os.remove(path)
    kept = [os.path.join(checkpoints, f"ckpt-{step}") for step in (2, 4)]
    tf.compat.v1.train.update_checkpoint_state(
        checkpoints, kept[-1], all_model_checkpoint_paths=kept
    )
    restored_steps = []
    restore = checkpoint.TrainingState.restore
    monkeypatch.setattr(
        checkpoint.TrainingState,
        "restore",
        lambda state: restored_steps.append(restore(state)) or restored_steps[-1],
    )
    assert run(resumed, 6)["step"] == 6
    assert restored_steps == [4]

    def weights(workdir):
        reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
        names = [n for n in reader.get_variable_to_shape_map() if n.startswith("model/")]
        return {n: reader.get_tensor(n) for n in names}

    expected, actual = weights(whole), weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(expected[name], actual[name], err_msg=name)


@pytest.mark.slow  # two prepare subprocesses (~15 s)
def test_prepare_writes_records_and_refuses_shards_without_them(
    run_module, assert_one_error_line, synthetic_root, tmp_path
):
    # The shared data root must stay as it is: prepare writes its manifests into a copy.
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    out = tmp_path / "records"
    done = run_module("prepare", f"--data_root={data}", f"--records={out}", "--num_shards=2")
    assert done.returncode == 0, done.stderr[-2000:]
    splits = records.read_index(str(out))
    assert len(splits["train"]) + len(splits["valid"]) == 48
    refused = run_module("prepare", f"--data_root={data}", "--num_shards=2")
    assert_one_error_line(refused, "--num_shards=2")
    # Commands that read the photos themselves name the folder the records came from.
    refused = run_module("prepare", f"--data_root={out}")
    assert_one_error_line(refused, "is a records folder (prepare --records); prepare reads")
    assert str(data) in refused.stderr
