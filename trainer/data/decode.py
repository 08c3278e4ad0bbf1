"""Files -> pixels: the one place where photos and masks are decoded and resized.

Everything that reads a photo goes through here (the data check, the cache,
the training and evaluation pipelines, predict, export and the sample
pictures), so that a photo reaches the network the same way wherever it is
read.

Photos are turned upright by their EXIF orientation tag, as labeling tools
(CVAT, LabelMe, Label Studio) and `PIL.ImageOps.exif_transpose` show them:
phone JPEGs often store their pixels sideways, and masks are drawn on the
upright photo.
"""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

BINARY_THRESHOLD = 127  # masks saved as 0/255 images; JPEG noise lands on either side.
# How a photo becomes the model's square (`data.resize`): "stretch" resizes it to
# the square, changing its proportions; "pad" first zero-pads it at the bottom
# and right to a square of its long side, keeping them; "crop" scales it to a
# fixed short side (`crop_side`), keeping them, and the model sees squares cut
# from it (random crops in training, overlapping tiles in prediction: tiling.py).
RESIZE_MODES = ("stretch", "pad", "crop")

# TensorFlow's decoders ignore EXIF (tensorflow/tensorflow#8430), and PIL inside
# tf.data would hold the GIL and cannot go into a SavedModel, so the tag is read
# with TensorFlow ops: walk the JPEG's leading segments to APP1 "Exif\0\0", then
# read IFD0 of its TIFF block. Malformed bytes give orientation 1, never an error.
_EXIF_SCAN_BYTES = 1 << 17  # the APP1 segment (64 KiB at most) comes before the pixels
_MAX_SEGMENTS = 32
_MAX_IFD_ENTRIES = 256
_ORIENTATION_TAG = 0x0112
_EXIF_HEADER = list(b"Exif\0\0")
# libjpeg can decode at 1/2, 1/4 and 1/8 of the size (tf.io.decode_jpeg's `ratio`).
_MAX_DCT_HALVINGS = 3


# A graph, also when called eagerly: the data check decodes in threads, and an
# eager while_loop of small ops run from several threads crashed TensorFlow.
# Graph-style code: traced without autograph's rewriting.
@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def exif_orientation(encoded: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of an encoded image, as an int32 scalar.

    Args:
        encoded: a string scalar, the file's bytes.

    Returns:
        The orientation tag's value; 1 when the file is not a JPEG, has no tag,
        or its EXIF is malformed.
    """
    head = tf.strings.substr(encoded, 0, _EXIF_SCAN_BYTES)
    # Most photos of a data set (and every PNG mask) carry no EXIF block: one
    # substring search spares them the segment walk, which cost 0.8 ms a photo.
    # (tf.strings.regex_full_match cannot do it: RE2 reads the bytes as UTF-8.)
    mentions_exif = tf.size(tf.strings.split(head, sep="Exif\0\0")) > 1
    return tf.cond(
        is_jpeg(head) & mentions_exif,
        lambda: _orientation_in_exif(head),
        lambda: tf.constant(1, tf.int32),
    )


def _orientation_in_exif(head: tf.Tensor) -> tf.Tensor:
    """`exif_orientation` of a JPEG's first bytes: walks its segments to APP1, reads IFD0."""
    data = tf.io.decode_raw(head, tf.uint8)
    size = tf.size(data, out_type=tf.int64)
    data = tf.cast(tf.pad(data, [[0, 1]]), tf.int64)

    def byte(index):
        # Reads past the end give the padding's 0, so odd bytes cannot fail a gather.
        return tf.gather(data, tf.clip_by_value(tf.cast(index, tf.int64), 0, size))

    def big_endian_16(index):
        return 256 * byte(index) + byte(index + 1)

    def next_segment(position, tiff):
        header = byte(position + 4 + tf.range(6, dtype=tf.int64))
        is_exif = (byte(position + 1) == 0xE1) & tf.reduce_all(header == _EXIF_HEADER)
        return position + 2 + big_endian_16(position + 2), tf.where(is_exif, position + 10, tiff)

    def before_exif_and_pixels(position, tiff):
        is_marker = byte(position) == 0xFF
        return (tiff < 0) & (position + 4 <= size) & is_marker & (byte(position + 1) != 0xDA)

    _, tiff = tf.while_loop(
        before_exif_and_pixels,
        next_segment,
        (tf.constant(2, tf.int64), tf.constant(-1, tf.int64)),  # after start-of-image
        maximum_iterations=_MAX_SEGMENTS,
    )

    little_endian = (byte(tiff) == 0x49) & (byte(tiff + 1) == 0x49)  # "II"
    big_endian = (byte(tiff) == 0x4D) & (byte(tiff + 1) == 0x4D)  # "MM"

    def read_16(offset):
        first, second = byte(tiff + offset), byte(tiff + offset + 1)
        return tf.where(little_endian, first + 256 * second, 256 * first + second)

    def read_32(offset):
        low_first = read_16(offset) + 65536 * read_16(offset + 2)
        return tf.where(little_endian, low_first, 65536 * read_16(offset) + read_16(offset + 2))

    ifd0 = read_32(4)
    count = tf.minimum(read_16(ifd0), _MAX_IFD_ENTRIES)
    entries = ifd0 + 2 + 12 * tf.range(count)
    is_orientation = (read_16(entries) == _ORIENTATION_TAG) & (tiff + entries + 12 <= size)
    # A SHORT value sits in the first two bytes of the entry's value field.
    value = tf.reduce_max(tf.where(is_orientation, read_16(entries + 8), 0))
    valid = (tiff >= 0) & (little_endian | big_endian) & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(valid, value, 1), tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns an image `[height, width, channels]` upright by its EXIF orientation.

    Args:
        image: the pixels as stored in the file.
        orientation: an int scalar, the EXIF tag (1-8; other values leave the image).

    Returns:
        The image as `PIL.ImageOps.exif_transpose` shows it (height and width
        swapped for orientations 5-8).
    """
    branches = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),  # 2: mirrored horizontally
        lambda: tf.image.rot90(image, k=2),  # 3: rotated 180
        lambda: tf.image.flip_up_down(image),  # 4: mirrored vertically
        lambda: tf.image.transpose(image),  # 5: transposed
        lambda: tf.image.rot90(image, k=3),  # 6: to be turned 90 degrees clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), k=2),  # 7: transversed
        lambda: tf.image.rot90(image, k=1),  # 8: to be turned 90 degrees counterclockwise
    ]
    index = tf.cast(orientation, tf.int32) - 1
    index = tf.where((index >= 0) & (index < len(branches)), index, 0)
    upright = tf.switch_case(index, branches)
    return tf.ensure_shape(upright, [None, None, image.shape[-1]])


def decode_image_bytes(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes an image's bytes as uint8 `[height, width, 3]`, upright by its EXIF tag."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return apply_orientation(image, exif_orientation(encoded))


def is_jpeg(encoded: tf.Tensor) -> tf.Tensor:
    """A bool scalar: the bytes start with a JPEG's start-of-image marker."""
    return tf.equal(tf.strings.substr(encoded, 0, 2), b"\xff\xd8")


def jpeg_scale_halvings(encoded: tf.Tensor, min_side: int) -> tf.Tensor:
    """How often (0-3) a JPEG can be halved while its short side stays >= `min_side`.

    Reads the frame header only (`tf.image.extract_jpeg_shape`); the bytes must be a JPEG.
    """
    stored_shape = tf.image.extract_jpeg_shape(encoded)
    short_side = tf.minimum(stored_shape[0], stored_shape[1])
    fits = [short_side >= 2**halvings * min_side for halvings in range(1, _MAX_DCT_HALVINGS + 1)]
    return tf.reduce_sum(tf.cast(tf.stack(fits), tf.int32))


def _decode_reduced_jpeg(encoded: tf.Tensor, min_side: int) -> tf.Tensor:
    """A JPEG decoded at the smallest DCT scale that keeps its short side >= `min_side`."""
    branches = [
        lambda ratio=2**halvings: tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
        for halvings in range(_MAX_DCT_HALVINGS + 1)
    ]
    return tf.switch_case(jpeg_scale_halvings(encoded, min_side), branches)


def upright_size(encoded: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """The photo's full upright `[height, width]` (int32), even when `image` was decoded reduced.

    Args:
        encoded: the file's bytes.
        image: the pixels `decode_image_for_model` made of them.
    """
    jpeg = is_jpeg(encoded)
    if_jpeg = lambda: tf.image.extract_jpeg_shape(encoded)[:2]  # noqa: E731
    stored = tf.cond(jpeg, if_jpeg, lambda: tf.shape(image)[:2])
    # The reduced pixels were turned upright already; the header's size is as stored.
    turned = exif_orientation(encoded) >= 5
    return tf.where(turned & jpeg, tf.reverse(stored, [0]), stored)


def decode_image_for_model(encoded: tf.Tensor, size_px: int) -> tf.Tensor:
    """Decodes an image's bytes upright for a model of `size_px`: as few pixels as suffice.

    A JPEG whose short side is at least twice `size_px` is decoded by libjpeg at
    1/2, 1/4 or 1/8 of its size (scaling inside the inverse DCT: far fewer
    pixels to make, and itself an antialiased reduction), keeping its short
    side >= `size_px`; `resize_image` then brings it to the model's size.
    Other photos are decoded whole.

    Returns:
        uint8 `[height, width, 3]`, upright by the EXIF orientation.
    """
    image = tf.cond(
        is_jpeg(encoded),
        lambda: _decode_reduced_jpeg(encoded, size_px),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    return apply_orientation(tf.ensure_shape(image, [None, None, 3]), exif_orientation(encoded))


def load_image(
    path: tf.Tensor, size_px: int, resize: str = "stretch", crop_side_px: int = 0
) -> tf.Tensor:
    """Reads an image file as the model sees it: uint8 `[size_px, size_px, 3]`, upright.

    Under `resize="crop"`: the centre square of the photo scaled to `crop_side_px`.
    """
    encoded = tf.io.read_file(path)
    if resize == "crop":
        scaled = scale_image(decode_image_for_model(encoded, crop_side_px), crop_side_px)
        return tf.image.resize_with_crop_or_pad(scaled, size_px, size_px)
    return to_model_square(decode_image_for_model(encoded, size_px), size_px, resize)


def crop_side(size_px: int, crop_scale: float) -> int:
    """The short side, in px, a photo is scaled to under `data.resize=crop`.

    Args:
        size_px: the model's input side (`data.image_size`).
        crop_scale: `data.crop_scale` (>= 1): the short side as a multiple of it.
    """
    return max(size_px, int(round(size_px * crop_scale)))


def crop_side_of(data_config) -> int:
    """The short side photos are scaled to under `data.resize=crop`; 0 under the other modes.

    Args:
        data_config: a config's `data` group: a ConfigDict, or the dict of a
            work directory's config.json (runs made before `data.resize`
            existed stretch).
    """
    if data_config.get("resize", "stretch") != "crop":
        return 0
    return crop_side(int(data_config["image_size"]), float(data_config["crop_scale"]))


def scaled_size(height: tf.Tensor, width: tf.Tensor, short_side: int) -> tf.Tensor:
    """int32 `[2]`: a photo's `[height, width]` scaled so its short side is `short_side`."""
    height, width = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    scale = short_side / tf.minimum(height, width)
    size = tf.stack([tf.round(height * scale), tf.round(width * scale)])
    return tf.maximum(tf.cast(size, tf.int32), short_side)


def scale_image(image: tf.Tensor, short_side: int) -> tf.Tensor:
    """Resizes a uint8 image `[h, w, 3]` to its short side `short_side`, keeping its proportions.

    As `resize_image`: area when shrinking, bilinear when enlarging.
    """
    shape = tf.shape(image)
    size = scaled_size(shape[0], shape[1], short_side)
    shrinking = tf.minimum(shape[0], shape[1]) >= short_side
    return _resized_uint8(image, size, shrinking)


def pad_to_square(image: tf.Tensor) -> tf.Tensor:
    """Zero-pads images `[..., h, w, c]` at the bottom and right to a square of the long side."""
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    side = tf.maximum(height, width)
    paddings = [[0, 0]] * (image.shape.rank - 3) + [[0, side - height], [0, side - width], [0, 0]]
    return tf.pad(image, paddings)


def to_model_square(image: tf.Tensor, size_px: int, resize: str = "stretch") -> tf.Tensor:
    """uint8 images `[..., h, w, 3]` -> the model's `[..., size_px, size_px, 3]` by `resize`."""
    if resize == "pad":
        image = pad_to_square(image)
    return resize_image(image, size_px)


def decode_image(path: tf.Tensor) -> tf.Tensor:
    """Reads an image file as uint8 `[height, width, 3]` (grayscale/RGBA converted).

    The image is turned upright by its EXIF orientation (`decode_image_bytes`).
    """
    return decode_image_bytes(tf.io.read_file(path))


def _is_palette_png(encoded: tf.Tensor) -> tf.Tensor:
    """A bool scalar: a PNG whose IHDR colour type is 3 (indexed colours)."""
    # 8-byte signature, chunk length and type (8), width and height (8), bit depth (1).
    is_png = tf.equal(tf.strings.substr(encoded, 0, 8), b"\x89PNG\r\n\x1a\n")
    return is_png & tf.equal(tf.strings.substr(encoded, 25, 1), b"\x03")


def _palette_indices(encoded: np.ndarray) -> np.ndarray:
    """The indices of a palette PNG, uint8 `[height, width, 1]` (PIL reads mode P as indices)."""
    with Image.open(io.BytesIO(np.asarray(encoded).item())) as image:
        return np.asarray(image, dtype=np.uint8)[..., None]


def decode_mask_values(path: tf.Tensor) -> tf.Tensor:
    """Reads a mask file as uint8 `[height, width, 1]`, values as stored (not binarised).

    See `decode_mask_value_bytes`.
    """
    return decode_mask_value_bytes(tf.io.read_file(path))


def decode_mask_value_bytes(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes a mask's bytes as uint8 `[height, width, 1]`, values as stored (not binarised).

    Decoded with its own channels, then made one: RGB(A) to luminance, gray +
    alpha to gray (CMYK JPEGs decode to RGB). Asking the decoder for one
    channel directly fails for BMP, WebP and CMYK JPEG files. A palette PNG
    (PASCAL VOC, labeling tools' colour masks) gives its indices: TensorFlow's
    PNG decoder expands the palette to colours, so PIL reads those files. A
    JPEG mask is turned upright by its EXIF orientation, as photos are.
    """

    def indices():
        values = tf.numpy_function(_palette_indices, [encoded], tf.uint8, stateful=False)
        return tf.ensure_shape(values, [None, None, 1])

    def one_channel():
        raw = tf.io.decode_image(encoded, channels=0, expand_animations=False)
        return tf.cond(
            tf.shape(raw)[-1] >= 3,
            lambda: tf.image.rgb_to_grayscale(raw[..., :3]),
            lambda: raw[..., :1],
        )

    values = tf.ensure_shape(
        tf.cond(_is_palette_png(encoded), indices, one_channel), [None, None, 1]
    )
    return apply_orientation(values, exif_orientation(encoded))


def decode_mask(path: tf.Tensor, num_classes: int = 1) -> tf.Tensor:
    """Reads a mask file as uint8 `[height, width, 1]` (see `decode_mask_bytes`)."""
    return decode_mask_bytes(tf.io.read_file(path), num_classes)


def decode_mask_bytes(encoded: tf.Tensor, num_classes: int = 1) -> tf.Tensor:
    """Decodes a mask's bytes as uint8 `[height, width, 1]`.

    Binary (`num_classes` 1): values in {0, 1}. 0/255 masks (and 3-channel or
    JPEG ones) are binarised at 127; label-index masks whose values are only 0
    and 1 are kept as they are. Multi-class: the label indices as stored
    (0..K-1, and the ignore label), never binarised.
    """
    mask = decode_mask_value_bytes(encoded)
    if num_classes > 1:
        return mask
    is_label_index = tf.reduce_max(mask) <= 1
    return tf.where(is_label_index, mask, tf.cast(mask > BINARY_THRESHOLD, tf.uint8))


def resize_image(image: tf.Tensor, size_px: int) -> tf.Tensor:
    """Resizes uint8 images `[..., h, w, 3]` to uint8 `[..., size_px, size_px, 3]`.

    Shrinking averages areas (a box filter: antialiased, and about 4x faster
    than antialiased bilinear on a 768 px photo); enlarging is bilinear.
    Training, evaluation and the exported serving graph all use this, so a
    photo reaches the network the same way.
    """
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    shrinking = tf.logical_and(height >= size_px, width >= size_px)
    return _resized_uint8(image, [size_px, size_px], shrinking)


def _resized_uint8(image: tf.Tensor, size, shrinking: tf.Tensor) -> tf.Tensor:
    """uint8 images resized to `size`: area when `shrinking`, else bilinear; rounded."""
    resized = tf.cond(
        shrinking,
        lambda: tf.image.resize(image, size, method="area"),
        # Antialiasing only matters when shrinking; bilinear enlarges to within
        # 0.013 of a grey level of it, at a third of the time.
        lambda: tf.image.resize(image, size),
    )
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def resize_mask(mask: tf.Tensor, size, num_classes: int = 1) -> tf.Tensor:
    """Resizes a mask `[h, w, 1]` to uint8 `[size, size, 1]` (or `[height, width, 1]`).

    Binary: bilinear, re-binarised at 0.5 (smooth edges). Label indices:
    nearest neighbour, so that no pixel gets a label between two others.

    Args:
        size: an int side, or `[height, width]`.
    """
    if isinstance(size, int):
        size = [size, size]
    if num_classes > 1:
        return tf.image.resize(mask, size, method="nearest")
    mask = tf.image.resize(tf.cast(mask, tf.float32), size)
    return tf.cast(mask >= 0.5, tf.uint8)


def load_pair(
    image_path: tf.Tensor,
    mask_path: tf.Tensor,
    size_px: int,
    resize: str = "stretch",
    num_classes: int = 1,
    crop_side_px: int = 0,
):
    """Reads an image file and its mask file as `decode_pair` decodes their bytes."""
    return decode_pair(
        tf.io.read_file(image_path),
        tf.io.read_file(mask_path),
        size_px,
        resize,
        num_classes,
        crop_side_px,
    )


def decode_pair(
    image_bytes: tf.Tensor,
    mask_bytes: tf.Tensor,
    size_px: int,
    resize: str = "stretch",
    num_classes: int = 1,
    crop_side_px: int = 0,
):
    """Decodes an image and its mask and resizes both, as training and evaluation see them.

    Args:
        image_bytes, mask_bytes: the pair's encoded files (read from a folder or a record).
        size_px: the model's input side.
        resize: `RESIZE_MODES`; under "pad" the padding is background in the mask.
        num_classes: the model's classes: 1 reads a binary mask, more read label indices.
        crop_side_px: "crop" only: the short side both are scaled to (`crop_side`).

    Returns:
        uint8 image `[size_px, size_px, 3]`, uint8 mask `[size_px, size_px, 1]`: in
        {0, 1} when binary, label indices otherwise. Under "crop", both are
        `[height, width, ...]` with a short side of `crop_side_px`, the photo's
        proportions kept; `tiling` cuts the model's squares from them.
    """
    mask = decode_mask_bytes(mask_bytes, num_classes)
    if resize == "crop":
        image = scale_image(decode_image_for_model(image_bytes, crop_side_px), crop_side_px)
        size = tf.shape(image)[:2]
        return image, resize_mask(mask, size, num_classes)
    if resize == "pad":
        mask = pad_to_square(mask)
    image = to_model_square(decode_image_for_model(image_bytes, size_px), size_px, resize)
    return image, resize_mask(mask, size_px, num_classes)


def to_model_inputs(image: tf.Tensor, mask: tf.Tensor):
    """uint8 image and mask -> float32 image in 0..1 and float32 mask (same values)."""
    return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.float32)
