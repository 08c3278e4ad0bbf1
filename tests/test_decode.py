"""Decoding files to pixels: masks of every format and value convention, resizing."""

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
