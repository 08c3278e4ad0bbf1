"""trainer.pictures: the validation sample grid as a PNG, a TensorBoard image and a wandb image."""

import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_model():
    """An untrained U-Net-ResNet18 at 64 px: pictures need a model, not a good one."""
    from trainer import model as model_lib

    from configs import demo_cpu

    config = demo_cpu.get_config()
    config.model.decoder_filters = (32, 16, 16, 8, 8)
    return model_lib.build_model(config.model, image_size=64)


@pytest.fixture(scope="module")
def samples(synthetic_root):
    from trainer import pictures
    from trainer.data import manifest

    return pictures.take_samples(manifest.read_manifests(synthetic_root)[1], 64, num_samples=4)


class FakeWandbRun:
    def __init__(self):
        self.logged = []

    def log(self, values, step):
        self.logged.append((values, step))


def test_take_samples_spreads_over_the_rows(synthetic_root, samples):
    from trainer.data import manifest

    valid = manifest.read_manifests(synthetic_root)[1]
    assert samples.images.shape == (4, 64, 64, 3) and samples.images.dtype == np.uint8
    assert samples.masks.shape == (4, 64, 64, 1) and set(np.unique(samples.masks)) <= {0, 1}
    first, last = (os.path.basename(valid["images"].iloc[i]) for i in (0, -1))
    assert samples.names[0] == first and samples.names[-1] == last


def test_write_samples_saves_the_grid_and_logs_it(tiny_model, samples, tmp_path):
    from trainer import pictures

    import tensorflow as tf

    summary_writer = tf.summary.create_file_writer(str(tmp_path / "tb"))
    run = FakeWandbRun()
    image = pictures.write_samples(
        tiny_model,
        samples,
        step=7,
        workdir=str(tmp_path),
        summary_writer=summary_writer,
        wandb_run=run,
    )
    summary_writer.flush()

    assert image.dtype == tf.uint8 and image.shape[0] == 1 and image.shape[3] == 3
    assert image.shape[2] > image.shape[1]  # one column per sample, three rows
    saved = tf.io.decode_png(open(tmp_path / "samples" / "step_7.png", "rb").read())
    np.testing.assert_array_equal(saved.numpy(), image[0].numpy())
    assert [(list(values), step) for values, step in run.logged] == [(["valid/samples"], 7)]
    (events,) = os.listdir(tmp_path / "tb")
    tags = {
        value.tag
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / events))
        for value in event.summary.value
    }
    assert "valid/samples" in tags
