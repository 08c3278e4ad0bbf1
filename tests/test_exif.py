"""EXIF orientation: photos are decoded upright, as PIL's `ImageOps.exif_transpose` shows them."""

import io

import trainer  # noqa: F401
from trainer.data import check, decode

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

# The transpose that stores an upright picture under each tag: the inverse of
# the one `ImageOps.exif_transpose` applies to show it upright.
_STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
# JPEG noise at quality 100 on flat blocks, far below the blocks' differences.
_TOLERANCE = 24


def _upright(height: int, width: int) -> np.ndarray:
    """Flat blocks of distinct colours: any mirror or turn moves one of them."""
    pixels = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w] = (255, 0, 0)
    pixels[:h, w:] = (0, 255, 0)
    pixels[h:, :w] = (0, 0, 255)
    pixels[h:, w:] = (255, 255, 255)
    pixels[: h // 2, : w // 2] = (255, 255, 0)  # breaks the diagonal symmetry of squares
    return pixels


def _tagged_jpeg(upright: np.ndarray, orientation: int, exif=None) -> bytes:
    """JPEG bytes whose pixels are `upright` stored under EXIF `orientation`."""
    image = Image.fromarray(upright)
    if _STORE[orientation] is not None:
        image = image.transpose(_STORE[orientation])
    if exif is None:
        exif = Image.Exif()
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=100, subsampling=0, exif=exif)
    return buffer.getvalue()


def _big_endian_exif(orientation: int) -> bytes:
    """An APP1 payload with a "MM" (Motorola) TIFF block; PIL writes "II"."""
    entry = (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    entry += orientation.to_bytes(2, "big") + b"\0\0"
    return b"Exif\0\0MM\0\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + entry + b"\0" * 4


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= _TOLERANCE


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("height, width", [(12, 20), (16, 16)])
def test_decode_image_matches_exif_transpose(tmp_path, orientation, height, width):
    upright = _upright(height, width)
    path = _write(tmp_path / "photo.jpg", _tagged_jpeg(upright, orientation))
    decoded = decode.decode_image(tf.constant(path)).numpy()
    assert decode.exif_orientation(tf.io.read_file(path)).numpy() == orientation
    _assert_close(decoded, np.asarray(ImageOps.exif_transpose(Image.open(path))))
    _assert_close(decoded, upright)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_big_endian_exif(orientation):
    upright = _upright(12, 20)
    data = _tagged_jpeg(upright, orientation, exif=_big_endian_exif(orientation))
    assert decode.exif_orientation(tf.constant(data)).numpy() == orientation
    decoded = decode.decode_image_bytes(tf.constant(data)).numpy()
    _assert_close(decoded, np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))))
    _assert_close(decoded, upright)


def test_exif_after_other_segments():
    """An APP1 after other leading segments (JFIF's APP0, a comment) is found."""
    data = _tagged_jpeg(_upright(12, 20), 6)
    comment = b"x" * 300
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    data = data[:2] + segment + data[2:]  # right after the start-of-image marker
    assert data.index(b"Exif") > 300
    assert decode.exif_orientation(tf.constant(data)).numpy() == 6
    _assert_close(decode.decode_image_bytes(tf.constant(data)).numpy(), _upright(12, 20))


def test_the_words_of_an_exif_header_outside_app1_are_no_tag():
    """Only an APP1 segment holds EXIF: the same bytes in a comment are ignored."""
    data = _tagged_jpeg(_upright(12, 20), 1, exif=b"")
    assert b"Exif" not in data
    comment = _big_endian_exif(6)  # a whole, valid block: tag 6
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    data = data[:2] + segment + data[2:]
    assert decode.exif_orientation(tf.constant(data)).numpy() == 1


def _mask_png(path, pixels: np.ndarray) -> str:
    Image.fromarray(pixels).save(path)
    return str(path)


def test_tagged_portrait_photo_passes_the_check(tmp_path):
    upright = _upright(20, 12)  # portrait, stored landscape under tag 6
    image = _write(tmp_path / "photo.jpg", _tagged_jpeg(upright, 6))
    mask = _mask_png(tmp_path / "mask.png", (upright[..., 2] > 0).astype(np.uint8) * 255)
    stored = tf.io.decode_jpeg(tf.io.read_file(image)).shape
    assert stored[:2] == (12, 20)  # what failed before: "mask is 12x20 but its image is 20x12"
    problems = check.check_pair(image, mask)
    assert not [p for p in problems if p.severity == "error"], problems
    assert not any("proportions" in p.message for p in problems)


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
def test_load_pair_lines_up(tmp_path, orientation):
    upright = np.full((32, 32, 3), 40, np.uint8)
    upright[4:12, 20:30] = 250  # the object, top right, in the upright frame
    object_mask = np.zeros((32, 32), np.uint8)
    object_mask[4:12, 20:30] = 255
    image_path = _write(tmp_path / "photo.jpg", _tagged_jpeg(upright, orientation))
    mask_path = _mask_png(tmp_path / "mask.png", object_mask)
    image, mask = decode.load_pair(tf.constant(image_path), tf.constant(mask_path), 32)
    is_object = image.numpy().mean(axis=-1) > 145
    np.testing.assert_array_equal(is_object, mask.numpy()[..., 0] == 1)


def test_tagged_jpeg_mask_is_turned_too(tmp_path):
    upright = np.zeros((12, 20), np.uint8)
    upright[:6, 10:] = 255
    stored = Image.fromarray(upright).transpose(_STORE[6])
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "mask.jpg", quality=100, exif=exif)
    mask = decode.decode_mask(tf.constant(str(tmp_path / "mask.jpg"))).numpy()[..., 0]
    np.testing.assert_array_equal(mask, upright // 255)


def _truncated_ifd() -> bytes:
    """An IFD0 that claims 65535 entries, and an offset past the segment."""
    return b"Exif\0\0II\x2a\0" + (8).to_bytes(4, "little") + b"\xff\xff" + b"\x12\x01"


@pytest.mark.parametrize(
    "exif",
    [
        _truncated_ifd(),
        b"Exif\0\0II\x2a\0" + (0xFFFFFFF0).to_bytes(4, "little"),  # IFD0 past the end
        b"Exif\0\0XX\x2a\0" + (8).to_bytes(4, "little"),  # no byte order
        b"Exif\0\0",  # no TIFF block
        b"Exif\0\0" + _big_endian_exif(6)[6:16],  # cut inside the entry
    ],
)
def test_malformed_exif_decodes_as_stored(tmp_path, exif):
    data = _tagged_jpeg(_upright(12, 20), 1, exif=exif)
    assert decode.exif_orientation(tf.constant(data)).numpy() == 1
    path = _write(tmp_path / "photo.jpg", data)
    expected = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    np.testing.assert_array_equal(decode.decode_image(tf.constant(path)).numpy(), expected)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"\xff\xd8",
        b"\xff\xd8\xff\xe1",
        b"\xff\xd8\xff\xe1\xff\xff",
        b"\xff\xd8\xff\xe1\0\x10Exif\0\0MM",
        b"GIF89a Exif\0\0MM",
        bytes(range(256)) * 8,
    ],
)
def test_odd_bytes_give_orientation_one(data):
    assert decode.exif_orientation(tf.constant(data)).numpy() == 1


def test_truncated_tagged_jpeg_still_reads_its_tag():
    data = _tagged_jpeg(_upright(12, 20), 6)
    end_of_exif = data.index(b"Exif") + 200
    assert decode.exif_orientation(tf.constant(data[:end_of_exif])).numpy() == 6
    for cut in range(0, end_of_exif, 7):
        assert decode.exif_orientation(tf.constant(data[:cut])).numpy() in (1, 6)


def test_png_is_untouched(tmp_path):
    pixels = _upright(12, 20)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(buffer, "PNG", exif=exif)
    path = _write(tmp_path / "photo.png", buffer.getvalue())
    assert decode.exif_orientation(tf.io.read_file(path)).numpy() == 1
    np.testing.assert_array_equal(decode.decode_image(tf.constant(path)).numpy(), pixels)


def test_orientation_in_graphs(tmp_path):
    expected = list(range(1, 9))
    paths = [_write(tmp_path / f"{k}.jpg", _tagged_jpeg(_upright(12, 20), k)) for k in expected]

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def orientation_of(data):
        return decode.exif_orientation(data)

    read = [orientation_of(tf.io.read_file(path)).numpy() for path in paths]
    assert read == expected

    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: (decode.exif_orientation(tf.io.read_file(path)), decode.decode_image(path)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    for (orientation, image), want in zip(dataset, expected):
        assert orientation.numpy() == want
        assert image.shape == (12, 20, 3)  # upright, whatever the stored frame
    assert dataset.element_spec[1].shape.as_list() == [None, None, 3]


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_a_large_tagged_jpeg_decoded_reduced_is_upright_at_its_full_size(orientation):
    upright = _upright(96, 160)  # 3x a model of 32 px on its short side: decoded at 1/2
    data = tf.constant(_tagged_jpeg(upright, orientation))

    reduced = decode.decode_image_for_model(data, 32).numpy()

    _assert_close(reduced, upright[::2, ::2])
    np.testing.assert_array_equal(decode.upright_size(data, reduced), [96, 160])
