"""The tf.data pipeline: shapes, sharding, balance and resume."""

import trainer  # noqa: F401
from trainer.data import pipeline
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
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """12 pairs of odd sizes in two groups; image i has the constant value 10 * i."""
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i in range(12):
        height, width = 40 + i, 50
        image = np.full((height, width, 3), 10 * i, np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[: height // 2] = 255
        Image.fromarray(image).save(root / f"{i}.png")
        Image.fromarray(mask).save(root / f"{i}_mask.png")
        rows.append(
            {
                "images": str(root / f"{i}.png"),
                "masks": str(root / f"{i}_mask.png"),
                "group": "ab"[i < 9],
            }
        )
    return pd.DataFrame(rows)


def _ids(images):
    """The image index i of each example (its constant pixel value / 10)."""
    return [int(round(float(v) * 255 / 10)) for v in images[:, 0, 0, 0].numpy()]


def test_training_batches_have_contract_shapes_and_values(frame):
    dataset = pipeline.make_dataset(frame, _data_config(), training=True, seed=0)
    images, masks = next(iter(dataset))
    assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
    assert masks.shape == (4, 32, 32, 1) and masks.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert set(np.unique(masks.numpy())) <= {0.0, 1.0}


def test_validation_is_one_pass_in_file_order_keeping_the_last_batch(frame):
    dataset = pipeline.make_dataset(frame, _data_config(), training=False)
    batches = list(dataset)
    assert [b[0].shape[0] for b in batches] == [4, 4, 4]
    assert sum((_ids(b[0]) for b in batches), []) == list(range(12))
    top_half = batches[0][1].numpy()[0, :16, :, 0]
    assert top_half.mean() > 0.9  # the upper half of every mask is foreground


def test_each_epoch_visits_every_file_once_in_a_new_order(frame):
    config = _data_config(augment=False, batch_size=12)
    iterator = iter(pipeline.make_dataset(frame, config, training=True, seed=3))
    first, second = _ids(next(iterator)[0]), _ids(next(iterator)[0])
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != second


def test_skipping_examples_resumes_the_same_augmented_stream(frame):
    config = _data_config()
    full = [
        b[0].numpy() for b in pipeline.make_dataset(frame, config, training=True, seed=1).take(4)
    ]
    resumed = pipeline.make_dataset(frame, config, training=True, seed=1, skip_examples=8)
    for expected, (images, _) in zip(full[2:], resumed.take(2)):
        np.testing.assert_array_equal(expected, images.numpy())


def test_vertical_flip_reaches_the_training_augmentations(frame):
    # Every mask covers its top half; the seed's flips and rotations (up to 30 degrees)
    # never fill the bottom row, an upside-down flip does.
    def bottom_rows_filled(config):
        dataset = pipeline.make_dataset(frame, config, training=True, seed=5).take(8)
        return sum(
            int(np.sum(masks[:, -1].numpy().mean(axis=(1, 2)) > 0.9)) for _, masks in dataset
        )

    assert bottom_rows_filled(_data_config()) == 0
    assert bottom_rows_filled(_data_config(vertical_flip=True)) > 0


def test_input_pipelines_read_disjoint_shards(frame):
    config = _data_config(augment=False, batch_size=12)
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        dataset = pipeline.make_dataset(frame, config, context, training=False)
        seen.append({i for images, _ in dataset for i in _ids(images)})
        assert next(iter(dataset))[0].shape[0] == 6  # per-replica batch: 12 / 2
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(12))


def test_balanced_sampling_draws_groups_evenly(frame):
    config = _data_config(augment=False, balanced=True, batch_size=50)
    images, _ = next(iter(pipeline.make_dataset(frame, config, training=True, seed=0)))
    from_group_b = sum(i >= 9 for i in _ids(images))  # group b holds 3 of the 12 files
    assert 15 <= from_group_b <= 35


def test_batches_have_static_channel_sizes(frame):
    for training in (True, False):
        image_spec, mask_spec = pipeline.make_dataset(
            frame, _data_config(augment=False), training=training
        ).element_spec
        assert image_spec.shape[1:] == (32, 32, 3) and mask_spec.shape[1:] == (32, 32, 1)


def test_a_worker_without_a_single_pair_is_one_line(frame):
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=2)
    with pytest.raises(UserError, match=r"validation set has 2 image/mask pairs for 3 input"):
        pipeline.make_dataset(frame.iloc[:2], _data_config(), context, training=False)


def test_parallelism_derives_from_cpus_and_replicas(monkeypatch):
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 16)
    assert pipeline.pipeline_parallelism(_data_config(), local_replicas=8) == (16, 16)
    overridden = _data_config(num_parallel_calls=3, prefetch_batches=5)
    assert pipeline.pipeline_parallelism(overridden, local_replicas=8) == (3, 5)


def test_weighted_validation_pads_every_pipeline_to_equal_full_batches(frame):
    config = _data_config(batch_size=8)  # 2 pipelines x 2 replicas: per-replica batch 2
    batch_counts, real = [], []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=4
        )
        batches = list(
            pipeline.make_dataset(frame, config, context, training=False, with_weights=True)
        )
        batch_counts.append(len(batches))
        assert all(b[0].shape[0] == 2 for b in batches)
        real.append(int(sum(float(tf.reduce_sum(b[2])) for b in batches)))
    # 6 files per pipeline, 4 examples per step on each: 2 steps, 8 examples, 2 of them padding.
    assert batch_counts == [4, 4] and real == [6, 6]


def test_training_skips_a_file_damaged_after_the_check(frame, tmp_path):
    damaged = frame.copy()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    damaged.loc[0, "images"] = str(broken)
    config = _data_config(augment=False, batch_size=11)
    images, _ = next(iter(pipeline.make_dataset(damaged, config, training=True, seed=0)))
    assert 0 not in _ids(images) and len(set(_ids(images))) == 11
