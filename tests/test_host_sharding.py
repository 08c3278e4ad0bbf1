"""Per-host input pipelines of a multi-host slice: every example once, equal steps.

A TPU pod slice (and multi-worker training) builds one input pipeline per host
through `distribute_datasets_from_function`, each given an `InputContext`.
These tests build the pipelines of 4 hosts with the contexts such a slice
hands out and follow each example by its photo's colour.
"""

import trainer  # noqa: F401  (Keras 2 before TensorFlow loads)
from trainer import distribute
from trainer.data import pipeline
from trainer.errors import UserError

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

NUM_HOSTS = 4
SIZE_PX = 32
GLOBAL_BATCH_SIZE = 8  # 2 per replica on 4 replicas, one per host


def _write_pairs(folder, num_pairs: int) -> pd.DataFrame:
    """Pairs whose photos are one colour each: the red channel holds the pair's number."""
    rows = []
    for index in range(num_pairs):
        image, mask = folder / f"{index:02d}.png", folder / f"{index:02d}_mask.png"
        Image.fromarray(np.full((12, 16, 3), (index * 10, 128, 200), np.uint8)).save(image)
        pixels = np.zeros((12, 16), np.uint8)
        pixels[:6] = 255
        Image.fromarray(pixels).save(mask)
        rows.append((str(image), str(mask), str(index % 2)))
    return pd.DataFrame(rows, columns=["images", "masks", "group"])


def _data_config():
    from configs import demo_cpu

    data = demo_cpu.get_config().data
    data.image_size = SIZE_PX
    data.batch_size = GLOBAL_BATCH_SIZE
    data.augment = False  # colours must reach the batches as written
    return data


def _host_context(host: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(
        num_input_pipelines=NUM_HOSTS, input_pipeline_id=host, num_replicas_in_sync=NUM_HOSTS
    )


def _pair_numbers(images: tf.Tensor) -> list[int]:
    """The pair each image of a batch `[b, s, s, 3]` came from (its red channel / 10)."""
    red = images.numpy()[:, SIZE_PX // 2, SIZE_PX // 2, 0] * 255.0
    return [int(round(value / 10.0)) for value in red]


def _shard_size(num_pairs: int, host: int) -> int:
    return len(range(host, num_pairs, NUM_HOSTS))


# The even split (12 pairs, ~30 s) runs with the slow suite; the uneven one, the
# harder case, in the fast one.
@pytest.fixture(
    scope="module",
    params=[pytest.param(12, marks=pytest.mark.slow), 10],
    ids=["12_pairs", "10_pairs_uneven"],
)
def frame(request, tmp_path_factory):
    return _write_pairs(tmp_path_factory.mktemp("pairs"), request.param)


def test_training_hosts_see_every_example_once_per_epoch_in_per_replica_batches(frame):
    seen = []
    for host in range(NUM_HOSTS):
        dataset = pipeline.make_dataset(frame, _data_config(), _host_context(host), training=True)
        epoch = _shard_size(len(frame), host)
        batches = list(dataset.take(epoch))  # two epochs, in batches of 2 (one replica's)
        for images, masks in batches:
            assert images.shape == (GLOBAL_BATCH_SIZE // NUM_HOSTS, SIZE_PX, SIZE_PX, 3)
            assert masks.shape == (GLOBAL_BATCH_SIZE // NUM_HOSTS, SIZE_PX, SIZE_PX, 1)
        numbers = [n for images, _ in batches for n in _pair_numbers(images)]
        seen += numbers[:epoch]
        # The stream goes on past the epoch with the same shard, reshuffled.
        assert sorted(numbers[epoch : 2 * epoch]) == sorted(numbers[:epoch])
    assert sorted(seen) == list(range(len(frame)))


def test_validation_hosts_run_equal_steps_and_weigh_every_example_once(frame):
    num_batches, weighted = [], []
    for host in range(NUM_HOSTS):
        dataset = pipeline.make_dataset(
            frame, _data_config(), _host_context(host), training=False, with_weights=True
        )
        batches = list(dataset)
        num_batches.append(len(batches))
        for images, _, weights in batches:
            assert images.shape[0] == GLOBAL_BATCH_SIZE // NUM_HOSTS  # static shapes
            weighted += [n for n, w in zip(_pair_numbers(images), weights.numpy()) if w == 1.0]
            assert set(weights.numpy()) <= {0.0, 1.0}
    largest_shard = -(-len(frame) // NUM_HOSTS)
    assert num_batches == [-(-largest_shard // 2)] * NUM_HOSTS
    assert sorted(weighted) == list(range(len(frame)))


def test_a_host_without_a_pair_is_a_user_error(tmp_path):
    frame = _write_pairs(tmp_path, 3)
    with pytest.raises(UserError, match="3 image/mask pairs for 4 input pipelines"):
        pipeline.make_dataset(frame, _data_config(), _host_context(3), training=True)


def test_a_pod_slice_is_resolved_by_its_name(monkeypatch):
    asked = []

    def resolver(tpu):
        asked.append(tpu)
        raise ValueError(f"no TPU called {tpu}")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver)
    with pytest.raises(UserError, match="could not reach the TPU 'my-pod'.*worker 0 with --tpu"):
        distribute.make_strategy("tpu", tpu="my-pod")
    assert asked == ["my-pod"]
