"""Squares cut from a scaled photo, and predictions put back together (`data.resize=crop`).

Under `data.resize=crop` a photo is scaled to a fixed short side
(`decode.crop_side`: `data.crop_scale` times the model's side), keeping its
proportions, and the network sees squares of its own size cut from it:

  - training: one random square per example, seeded by the example's stream
    position (`random_crop`), so resume and replicas stay exact;
  - validation during training: a grid of squares covering the scaled photo
    (`validation_tiles`); where two overlap, each pixel is counted by one of
    them only (a per-pixel weight), so the counts are those of every pixel once;
  - predict, evaluate and the export: overlapping squares (`TILE_OVERLAP`) whose
    probabilities are blended with weights that fall off towards a square's
    edges, where the network sees the least context (`tiled_probabilities`).

Written with TensorFlow ops so that the same code runs in tf.data, in the
evaluation loop and inside the exported SavedModel; no library we use tiles
inside a graph.
"""

import tensorflow as tf

# Prediction squares overlap by this fraction of their side.
TILE_OVERLAP = 0.25
# The blending weight at a square's edge, relative to its inner part; not 0, so
# a photo's border pixels, seen by one square only, still get its value.
_EDGE_WEIGHT = 0.05


def tile_starts(length: tf.Tensor, size_px: int, overlap: float) -> tf.Tensor:
    """int32 starts of the squares along one side of `length` >= `size_px` pixels.

    The fewest squares that cover the side with at least `overlap` of a square
    shared by neighbours, spread evenly from 0 to `length - size_px`.
    """
    length = tf.cast(length, tf.float64)
    stride = size_px * (1.0 - overlap)
    count = tf.maximum(tf.math.ceil((length - size_px) / stride), 0.0) + 1.0
    steps = tf.range(count, dtype=tf.float64)
    starts = tf.round(steps * (length - size_px) / tf.maximum(count - 1.0, 1.0))
    return tf.cast(starts, tf.int32)


def tile_origins(height: tf.Tensor, width: tf.Tensor, size_px: int, overlap: float) -> tf.Tensor:
    """int32 `[n, 2]`: the (row, column) origin of each square, row by row."""
    return _grid(tile_starts(height, size_px, overlap), tile_starts(width, size_px, overlap))


def _grid(rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """int32 `[len(rows) * len(columns), 2]`: every (row, column) pair, row by row."""
    grid_rows, grid_columns = tf.meshgrid(rows, columns, indexing="ij")
    return tf.reshape(tf.stack([grid_rows, grid_columns], axis=-1), [-1, 2])


def cut_tiles(image: tf.Tensor, origins: tf.Tensor, size_px: int) -> tf.Tensor:
    """The squares `[n, s, s, c]` of `image` `[h, w, c]` at `origins` `[n, 2]`."""
    return tf.map_fn(
        lambda origin: tf.slice(image, [origin[0], origin[1], 0], [size_px, size_px, -1]),
        origins,
        fn_output_signature=tf.TensorSpec([size_px, size_px, image.shape[-1]], image.dtype),
    )


def random_crop(image: tf.Tensor, mask: tf.Tensor, example_seed: tf.Tensor, size_px: int):
    """One square of `size_px` from the same place of `image` and `mask`, seeded.

    Args:
        image: uint8 `[h, w, 3]`, h and w >= `size_px`.
        mask: uint8 `[h, w, 1]`.
        example_seed: int64 scalar: the example's stream position (the same seed
            gives the same square, on resume and on every replica).

    Returns:
        uint8 image `[size_px, size_px, 3]`, uint8 mask `[size_px, size_px, 1]`.
    """
    both = tf.concat([image, mask], axis=-1)
    seed = tf.stack([tf.cast(example_seed, tf.int64), tf.constant(0x5EED, tf.int64)])
    square = tf.image.stateless_random_crop(both, [size_px, size_px, 4], seed=seed)
    return square[..., :3], square[..., 3:]


def _owned(starts: tf.Tensor, length: tf.Tensor, size_px: int) -> tf.Tensor:
    """float32 `[n, s]`: 1 where a square's pixel is counted by it along one side.

    Neighbouring squares that overlap split the overlap at its middle, so every
    pixel of the side is counted by exactly one square.
    """
    ends = starts + size_px
    middles = (starts[1:] + ends[:-1]) // 2
    first = tf.concat([[0], middles], axis=0)
    last = tf.concat([middles, [length]], axis=0)
    position = starts[:, None] + tf.range(size_px)[None, :]
    return tf.cast((position >= first[:, None]) & (position < last[:, None]), tf.float32)


def validation_tiles(image: tf.Tensor, mask: tf.Tensor, size_px: int):
    """The grid of squares that covers the centre square of a scaled photo, each pixel once.

    The centre square (the short side's) gives every photo of a data set the
    same number of squares, so that input pipelines and replicas run equal
    validation steps without knowing the photos' proportions in advance; on a
    4:3 photo it holds 3/4 of the pixels (`trainer.evaluate` counts them all).

    Args:
        image: uint8 `[h, w, 3]`, h and w >= `size_px`.
        mask: uint8 `[h, w, 1]`.

    Returns:
        `(images [n, s, s, 3], masks [n, s, s, 1], counted [n, s, s, 1])`:
        `counted` is 1.0 where the square counts the pixel, 0.0 where a
        neighbour does.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top : top + side, left : left + side]
    mask = mask[top : top + side, left : left + side]
    height = width = side
    rows = tile_starts(height, size_px, 0.0)
    columns = tile_starts(width, size_px, 0.0)
    origins = _grid(rows, columns)
    row_owned = _owned(rows, height, size_px)
    column_owned = _owned(columns, width, size_px)
    counted = row_owned[:, None, :, None] * column_owned[None, :, None, :]
    counted = tf.reshape(counted, [-1, size_px, size_px, 1])
    return cut_tiles(image, origins, size_px), cut_tiles(mask, origins, size_px), counted


def _blend_window(size_px: int) -> tf.Tensor:
    """float32 `[s, s, 1]`: 1 inside, falling linearly to `_EDGE_WEIGHT` over the overlap."""
    ramp_px = max(1.0, size_px * TILE_OVERLAP)
    position = tf.range(size_px, dtype=tf.float32)
    distance = tf.minimum(position, size_px - 1.0 - position)
    side = tf.clip_by_value((distance + 0.5) / ramp_px, _EDGE_WEIGHT, 1.0)
    return (side[:, None] * side[None, :])[..., None]


def blend(tile_probabilities: tf.Tensor, origins: tf.Tensor, height, width) -> tf.Tensor:
    """Puts squares' probabilities `[n, s, s, C]` back into one `[height, width, C]`.

    Each pixel gets the weighted mean of the squares that cover it (the
    weights of `_blend_window`), so probabilities that sum to 1 still do.
    """
    size_px = tile_probabilities.shape[1]
    channels = tf.shape(tile_probabilities)[-1]
    window = _blend_window(size_px)
    offsets = tf.stack(tf.meshgrid(tf.range(size_px), tf.range(size_px), indexing="ij"), axis=-1)
    indices = origins[:, None, None, :] + offsets[None]  # [n, s, s, 2]
    canvas_shape = tf.stack([height, width, channels])
    weighted = tf.scatter_nd(indices, tile_probabilities * window, canvas_shape)
    windows = tf.broadcast_to(window, tf.shape(tile_probabilities[..., :1]))
    weights = tf.scatter_nd(indices, windows, tf.stack([height, width, 1]))
    return weighted / tf.maximum(weights, 1e-12)


def tiled_probabilities(predict, image: tf.Tensor, size_px: int) -> tf.Tensor:
    """Probabilities `[h, w, C]` of a scaled photo `[h, w, 3]` from overlapping squares.

    Args:
        predict: uint8 images `[n, s, s, 3]` -> float32 probabilities `[n, s, s, C]`.
        image: uint8 `[h, w, 3]`, scaled as training scaled it (`decode.scale_image`).
        size_px: s, the model's side.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    origins = tile_origins(height, width, size_px, TILE_OVERLAP)
    tiles = cut_tiles(image, origins, size_px)
    # An export's signature gives no static shape; the blend needs the side.
    probabilities = tf.ensure_shape(predict(tiles), [None, size_px, size_px, None])
    return blend(probabilities, origins, height, width)
