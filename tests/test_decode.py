"""Decoding files to pixels: masks of every format and value convention, resizing."""

import io

import trainer  # noqa: F401
from trainer.data import decode

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image


@pytest.mark.parametrize(
    "pixels, expected",
    [
        (np.array([[0, 255], [128, 127]], np.uint8), [[0, 1], [1, 0]]),  # 0/255, binarised at 127
        (np.array([[0, 1], [1, 0]], np.uint8), [[0, 1], [1, 0]]),  # label-index mask
        (np.array([[0, 0], [0, 0]], np.uint8), [[0, 0], [0, 0]]),  # empty
    ],
)
def test_mask_decoding(tmp_path, pixels, expected):
    path = tmp_path / "mask.png"
    Image.fromarray(pixels).save(path)
    decoded = decode.decode_mask(tf.constant(str(path)))
    np.testing.assert_array_equal(decoded.numpy()[..., 0], expected)


def test_rgb_jpeg_mask_is_binarised(tmp_path):
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.jpg", quality=70)
    decoded = decode.decode_mask(tf.constant(str(tmp_path / "mask.jpg"))).numpy()[..., 0]
    assert set(np.unique(decoded)) == {0, 1}
    assert decoded[:, :14].sum() == 0 and decoded[:, 18:].min() == 1


@pytest.mark.parametrize(
    "name, mode",
    [
        ("m.bmp", "L"),
        ("m.webp", "L"),
        ("m.png", "RGBA"),
        ("m.png", "LA"),
        ("m.png", "P"),
        ("m.jpg", "CMYK"),
    ],
)
def test_masks_in_any_format_tensorflow_reads_decode_alike(tmp_path, name, mode):
    pixels = np.zeros((24, 32), np.uint8)
    pixels[:, 20:] = 255
    Image.fromarray(pixels).convert(mode).save(tmp_path / name, lossless=True)
    decoded = decode.decode_mask(tf.constant(str(tmp_path / name))).numpy()
    np.testing.assert_array_equal(decoded[..., 0], pixels // 255)


def _jpeg(pixels: np.ndarray) -> tf.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return tf.constant(buffer.getvalue())


def _smooth_photo(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    red = 127 + 100 * np.sin(rows / 23.0) * np.cos(cols / 31.0)
    green = 255 * cols / width
    blue = 255 * rows / height
    return np.stack([red, green, blue], -1).round().astype(np.uint8)


@pytest.mark.parametrize(
    "height, width, size_px, halvings",
    [
        (100, 150, 64, 0),
        (128, 200, 64, 1),
        (256, 300, 64, 2),
        (600, 520, 64, 3),
        (2000, 600, 64, 3),
    ],
)
def test_jpegs_are_halved_while_their_short_side_stays_at_least_the_model_size(
    height, width, size_px, halvings
):
    data = _jpeg(_smooth_photo(height, width))

    assert decode.jpeg_scale_halvings(data, size_px) == halvings
    image = decode.decode_image_for_model(data, size_px)
    assert min(image.shape[:2]) >= size_px
    assert image.shape[:2] == (-(-height // 2**halvings), -(-width // 2**halvings))
    np.testing.assert_array_equal(decode.upright_size(data, image), [height, width])


def test_the_model_sees_a_reduced_jpeg_as_it_would_see_the_whole_photo():
    data = _jpeg(_smooth_photo(520, 640))

    reduced = decode.resize_image(decode.decode_image_for_model(data, 64), 64).numpy()
    whole = decode.resize_image(decode.decode_image_bytes(data), 64).numpy()

    difference = np.abs(reduced.astype(int) - whole.astype(int))
    assert difference.mean() < 1.5 and difference.max() <= 8


def test_photos_smaller_than_the_model_are_enlarged_bilinearly():
    """As OpenCV's bilinear enlargement, to a grey level (half-pixel centres, both)."""
    import cv2

    photo = _smooth_photo(50, 70)
    noise = np.random.default_rng(0).integers(0, 60, photo.shape)  # edges, not just ramps
    photo = np.clip(photo.astype(int) + noise, 0, 255).astype(np.uint8)

    enlarged = decode.resize_image(photo, 96).numpy()

    expected = cv2.resize(photo, (96, 96), interpolation=cv2.INTER_LINEAR)
    assert np.abs(enlarged.astype(int) - expected.astype(int)).max() <= 1


def test_other_formats_are_decoded_whole(tmp_path):
    pixels = _smooth_photo(300, 260)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    data = tf.io.read_file(str(path))

    image = decode.decode_image_for_model(data, 64).numpy()

    np.testing.assert_array_equal(image, pixels)
    np.testing.assert_array_equal(decode.upright_size(data, image), [300, 260])


def test_pad_keeps_the_proportions_and_pads_the_bottom_and_right():
    photo = np.full((40, 80, 3), 200, np.uint8)
    mask = np.ones((40, 80, 1), np.uint8)

    square = decode.to_model_square(tf.constant(photo), 32, "pad").numpy()
    padded_mask = decode.resize_mask(decode.pad_to_square(tf.constant(mask)), 32).numpy()

    assert square.shape == (32, 32, 3)
    np.testing.assert_array_equal(square[:16], 200)  # the photo: 40 x 80 -> 16 x 32
    np.testing.assert_array_equal(square[16:], 0)  # the padding
    assert padded_mask[:16].all() and not padded_mask[16:].any()
    stretched = decode.to_model_square(tf.constant(photo), 32, "stretch").numpy()
    np.testing.assert_array_equal(stretched, 200)


def test_load_pair_pads_photo_and_mask_alike(tmp_path):
    photo = _smooth_photo(60, 100)
    mask = np.zeros((60, 100), np.uint8)
    mask[10:30, 20:60] = 255
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")

    image, resized_mask = decode.load_pair(
        str(tmp_path / "photo.png"), str(tmp_path / "mask.png"), 50, "pad"
    )

    assert image.shape == (50, 50, 3) and resized_mask.shape == (50, 50, 1)
    assert not image.numpy()[31:].any() and not resized_mask.numpy()[30:].any()
    np.testing.assert_array_equal(resized_mask.numpy()[5:15, 10:30], 1)  # 10:30 x 20:60 halved


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_probabilities_go_back_to_the_photo_as_the_photo_came(resize):
    from trainer import serving

    rows, cols = np.mgrid[0:30, 0:70]
    probabilities = ((rows + cols) / 100.0).astype(np.float32)[..., None]
    as_photo = tf.constant((probabilities * 255).round().astype(np.uint8).repeat(3, -1))
    square = tf.cast(decode.to_model_square(as_photo, 64, resize)[..., :1], tf.float32) / 255.0

    restored = serving.resize_probabilities(square, 30, 70, resize).numpy()

    assert restored.shape == (30, 70, 1)
    assert np.abs(restored - probabilities).mean() < 0.01
