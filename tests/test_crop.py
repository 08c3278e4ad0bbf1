"""`data.resize=crop`: squares cut from scaled photos in training, tiles in prediction.

A pointwise network (each output pixel a function of its input pixel alone)
stands in for a trained one: tiled and blended, it must give what it gives on
the whole photo, so every check below is exact. The photos are blocks of
red/black whose mask is the red, and their short side is already the crop
side, so scaling leaves them as they are.
"""

import os

from trainer import best, classes, evaluate, inference, loop, predict, serving, tiling
from trainer import workdir as workdir_lib
from trainer.data import cache, decode, pipeline

import ml_collections
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tests import files, test_serving

SIZE_PX = 32
CROP_SIDE = 40  # crop_scale 1.25
SHAPES = [(40, 64), (72, 40), (40, 40)]  # (height, width): wide, tall, square


def _pointwise_network():
    """Foreground probability from the red channel: far from 0.5 on our photos."""
    inputs = tf.keras.Input([SIZE_PX, SIZE_PX, 3])
    outputs = tf.keras.layers.Lambda(lambda x: tf.sigmoid(8.0 * (x[..., :1] - 0.5)))(inputs)
    return tf.keras.Model(inputs, outputs)


def _pointwise(images):
    return tf.sigmoid(8.0 * (tf.cast(images, tf.float32)[..., :1] / 255.0 - 0.5))


def _blocks(shape, seed):
    """uint8 `[h, w, 3]`: 4 px blocks, red (255) or black, with green noise."""
    rng = np.random.default_rng(seed)
    height, width = shape
    red = rng.integers(0, 2, [height // 4 + 1, width // 4 + 1]).repeat(4, 0).repeat(4, 1)
    image = np.zeros([height, width, 3], np.uint8)
    image[..., 0] = 255 * red[:height, :width]
    image[..., 1] = rng.integers(0, 256, [height, width])
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Rows of three PNG photos of SHAPES and their masks (the red)."""
    root = tmp_path_factory.mktemp("crop_photos")
    rows = []
    for index, shape in enumerate(SHAPES):
        image = _blocks(shape, index)
        image_path, mask_path = root / f"p{index}.png", root / f"p{index}_mask.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray((image[..., 0] > 127).astype(np.uint8) * 255).save(mask_path)
        rows.append({"images": str(image_path), "masks": str(mask_path), "group": ""})
    return pd.DataFrame(rows)


def _data_config(**overrides):
    values = {
        "image_size": SIZE_PX,
        "resize": "crop",
        "crop_scale": CROP_SIDE / SIZE_PX,
        "batch_size": 2,
        "balanced": False,
        "augment": False,
        "num_parallel_calls": 1,
        "prefetch_batches": 1,
        "shuffle_buffer": 10,
    }
    return ml_collections.ConfigDict({**values, **overrides})


def test_the_crop_side_is_the_scale_times_the_model_size_and_never_below_it():
    assert decode.crop_side(SIZE_PX, 1.25) == CROP_SIDE
    assert decode.crop_side(160, 2.2) == 352
    assert decode.crop_side(160, 0.5) == 160


def test_a_photo_is_scaled_to_the_crop_side_keeping_its_proportions():
    image = tf.zeros([300, 400, 3], tf.uint8)
    assert decode.scale_image(image, 150).shape == (150, 200, 3)
    assert decode.scale_image(tf.zeros([30, 41, 3], tf.uint8), 60).shape == (60, 82, 3)


@pytest.mark.parametrize("shape", [(45, 77), (32, 32), (90, 33)])
def test_tiled_probabilities_of_a_pointwise_network_are_its_probabilities_on_the_photo(shape):
    image = tf.constant(_blocks(shape, 7))
    tiled = tiling.tiled_probabilities(_pointwise, image, SIZE_PX).numpy()
    np.testing.assert_allclose(tiled, _pointwise(image).numpy(), atol=1e-6)


def test_prediction_squares_overlap_by_at_least_a_quarter_and_cover_the_side():
    starts = tiling.tile_starts(100, SIZE_PX, tiling.TILE_OVERLAP).numpy()
    assert starts[0] == 0 and starts[-1] == 100 - SIZE_PX
    assert np.all(np.diff(starts) <= SIZE_PX * (1 - tiling.TILE_OVERLAP))


def test_training_squares_are_seeded_by_position_and_keep_mask_and_photo_aligned(photos):
    def first_batches(dataset):
        return [tuple(x.numpy() for x in batch) for batch in dataset.take(4)]

    config = _data_config()
    run = first_batches(pipeline.make_dataset(photos, config, training=True, seed=3))
    again = first_batches(pipeline.make_dataset(photos, config, training=True, seed=3))
    for (images, masks), (images_again, masks_again) in zip(run, again):
        assert images.shape == (2, SIZE_PX, SIZE_PX, 3)
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(masks, masks_again)
        np.testing.assert_array_equal(masks, images[..., :1] > 0.5)
    # Eight squares from three photos: some photo is cut at two places.
    squares = {images[i].tobytes() for images, _ in run for i in range(2)}
    assert len(squares) == 8
    # A resumed run (3 examples seen) cuts the squares the uninterrupted one cut.
    resumed = pipeline.make_dataset(photos, config, training=True, seed=3, skip_examples=3)
    images, masks = next(iter(resumed))
    np.testing.assert_array_equal(images[0], run[1][0][1])
    np.testing.assert_array_equal(images[1], run[2][0][0])


def _counted_pixels(photos):
    """Foreground pixels of each photo's centre square (what validation counts)."""
    total = 0
    for height, width in SHAPES:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        mask = np.asarray(Image.open(photos["masks"][SHAPES.index((height, width))])) > 127
        total += int(mask[top : top + side, left : left + side].sum())
    return total


def test_validation_counts_every_pixel_of_each_centre_square_once(photos):
    dataset = pipeline.make_dataset(photos, _data_config(), training=False, with_weights=True)
    weights = np.concatenate([batch[2].numpy() for batch in dataset])
    # Each photo is 4 squares of 32 px over its 40 px centre square; a fourth
    # photo of weight 0 pads the 3 to whole steps of 2.
    assert weights.shape == (4 * 4, SIZE_PX, SIZE_PX, 1)
    assert weights.sum() == len(SHAPES) * CROP_SIDE * CROP_SIDE and not weights[12:].any()

    strategy = files.one_device()
    with strategy.scope():
        eval_fn = loop.make_eval_fn(_pointwise_network(), strategy)
    results = loop.evaluate(eval_fn, strategy.experimental_distribute_dataset(dataset))
    assert results["tp"] == [_counted_pixels(photos)]
    assert results["fp"] == [0] and results["fn"] == [0]
    assert results["num_examples"] == 4 * len(SHAPES)


def test_the_cache_holds_each_scaled_pair_whole(photos, tmp_path):
    cached = cache.ensure_cached(
        photos,
        SIZE_PX,
        str(tmp_path),
        num_parallel_calls=1,
        resize="crop",
        crop_side_px=CROP_SIDE,
    )
    assert os.listdir(tmp_path) == [f"{SIZE_PX}px_crop{CROP_SIDE}"]
    for row in range(len(photos)):
        image, mask = cache.read_pair(cached[cache.COLUMN][row], SIZE_PX, "crop")
        expected = decode.load_pair(
            photos["images"][row], photos["masks"][row], SIZE_PX, "crop", 1, CROP_SIDE
        )
        np.testing.assert_array_equal(image.numpy(), expected[0].numpy())
        np.testing.assert_array_equal(mask.numpy(), expected[1].numpy())
    from_cache = pipeline.make_dataset(cached, _data_config(), training=False, with_weights=True)
    from_files = pipeline.make_dataset(photos, _data_config(), training=False, with_weights=True)
    for cached_batch, file_batch in zip(from_cache, from_files):
        for cached_part, file_part in zip(cached_batch, file_batch):
            np.testing.assert_array_equal(cached_part.numpy(), file_part.numpy())


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The pointwise network exported as a model trained under resize=crop."""
    directory = str(tmp_path_factory.mktemp("crop_export") / "export")
    return serving.export_saved_model(
        _pointwise_network(), directory, resize="crop", crop_side_px=CROP_SIDE
    )


def test_an_export_records_the_crop_side_and_serves_the_network_alone_on_squares(export):
    metadata = workdir_lib.read_json(os.path.join(export, serving.METADATA_FILE))
    assert metadata["resize"] == "crop" and metadata["crop_side"] == CROP_SIDE
    assert metadata["signatures"][-1] == serving.SQUARES_SIGNATURE
    trained = inference.load_trained_model(export)
    assert trained.crop_side_px == CROP_SIDE
    squares = _blocks((SIZE_PX, SIZE_PX), 1)[None]
    np.testing.assert_allclose(trained.predict(squares), _pointwise(squares), atol=1e-6)


def test_serving_tiles_photos_of_different_sizes_in_one_batch(export, photos):
    loaded = tf.saved_model.load(export)
    encoded = [tf.io.read_file(path) for path in photos["images"][:2]]
    outputs = loaded.signatures["serving_default"](image_bytes=tf.stack(encoded))
    assert outputs["height"].numpy().tolist() == [40, 72]
    assert outputs["width"].numpy().tolist() == [64, 40]
    assert outputs["mask"].shape == (2, 72, 64, 1)
    for index, (height, width) in enumerate(SHAPES[:2]):
        expected = np.asarray(Image.open(photos["masks"][index]))[..., None] > 127
        np.testing.assert_array_equal(outputs["mask"][index, :height, :width], expected)
        assert not outputs["mask"][index, height:].numpy().any()  # zero padding

    image = _blocks((40, 64), 0)[None]
    served = loaded.signatures["serve_images"](images=image)["probabilities"]
    np.testing.assert_allclose(served, _pointwise(image), atol=1e-5)


def test_evaluate_and_predict_tile_each_photo_at_its_own_size(export, photos, tmp_path):
    trained = inference.load_trained_model(export)
    for resolution in evaluate.RESOLUTIONS:
        counts = evaluate.count_confusions(
            trained, photos, files.one_device(), global_batch_size=1, resolution=resolution
        )
        at_half = counts[:, evaluate.THRESHOLDS.index(0.5), 0]
        masks = [np.asarray(Image.open(path)) > 127 for path in photos["masks"]]
        np.testing.assert_array_equal(at_half[:, 0], [mask.sum() for mask in masks])
        assert not at_half[:, 1:].any()  # no false positive or negative

    predict.predict_files(trained, list(photos["images"]), str(tmp_path))
    for index, path in enumerate(photos["masks"]):
        written = np.asarray(Image.open(tmp_path / f"p{index}_mask.png"))
        np.testing.assert_array_equal(written > 0, np.asarray(Image.open(path)) > 127)


def test_a_work_directory_trained_on_squares_is_loaded_with_its_crop_side(tmp_path):
    config = test_serving._config()
    config.data.resize = "crop"
    config.data.crop_scale = 2.0
    network = test_serving.build_network(config)
    workdir = str(tmp_path / "workdir")
    workdir_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    best.save_best_weights(workdir, network, step=1, results={"iou": 0.5})
    trained = inference.load_trained_model(workdir)
    assert (trained.resize, trained.crop_side_px) == ("crop", 2 * test_serving.SIZE_PX)
    assert trained.task == classes.task(config)
    squares = _blocks((test_serving.SIZE_PX, test_serving.SIZE_PX), 3)[None]
    expected = network(tf.constant(squares, tf.float32) / 255.0, training=False)
    np.testing.assert_allclose(trained.predict(squares), expected, atol=1e-5)


def test_int8_calibration_sees_squares_of_the_scaled_photos(photos):
    from trainer import export as export_lib

    images = export_lib.calibration_images(photos, SIZE_PX, 3, "crop", CROP_SIDE)
    assert images.shape == (3, SIZE_PX, SIZE_PX, 3)
    centre = _blocks(SHAPES[0], 0)[4:36, 16:48]  # a 40 x 64 photo's centre square of 32
    np.testing.assert_array_equal(images[0], centre.astype(np.float32) / 255.0)


@pytest.mark.slow
def test_a_crop_run_on_two_devices_resumes_and_its_export_evaluates_as_its_work_directory(
    tmp_path, synthetic_root, tiny_args, run_module
):
    workdir = tmp_path / "run"
    args = [
        *tiny_args,
        "--config.data.resize=crop",
        "--config.data.crop_scale=1.5",
        f"--data_root={synthetic_root}",
        f"--workdir={workdir}",
        "--strategy=mirrored",
        "--num_cpu_devices=2",
    ]
    process = run_module("train", *args, "--config.train.steps=2")
    assert process.returncode == 0, process.stderr[-3000:]
    process = run_module("train", *args, "--config.train.steps=4")
    assert process.returncode == 0, process.stderr[-3000:]
    valid = [r for r in files.metrics_records(workdir) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [2, 4]
    assert os.listdir(workdir / "cache") == ["64px_crop96"]

    summaries = []
    for index, model in enumerate((workdir, workdir / "export")):
        output_dir = tmp_path / f"eval_{index}"
        process = run_module(
            "evaluate",
            f"--model={model}",
            f"--data_root={synthetic_root}",
            f"--output_dir={output_dir}",
        )
        assert process.returncode == 0, process.stderr[-3000:]
        summaries.append(workdir_lib.read_json(str(output_dir / "summary.json")))
    assert summaries[0]["tp"] == summaries[1]["tp"] and summaries[0]["fp"] == summaries[1]["fp"]
    assert summaries[0]["num_images"] == summaries[1]["num_images"] > 0
