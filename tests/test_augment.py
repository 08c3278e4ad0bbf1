"""The seeded albumentations augmenter: reproducible per example, cheap inside tf.data."""

import trainer  # noqa: F401
from trainer.data import augment

import numpy as np
import tensorflow as tf


def _example(seed=0, size=48):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = (rng.random((size, size, 1)) > 0.5).astype(np.uint8)
    return image, mask


def test_output_depends_only_on_the_example_seed():
    augmenter = augment.SeededAugmenter()
    image, mask = _example()
    first = augmenter(image, mask, np.int64(7))
    outputs = [augmenter(image, mask, np.int64(seed)) for seed in range(8)]
    again = augmenter(image, mask, np.int64(7))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len({out[0].tobytes() for out in outputs}) > 4  # the seeds give different images
    assert all(out[0].shape == image.shape and out[1].shape == mask.shape for out in outputs)


def test_transforms_fire_independently():
    """albumentations 2.0 seeds every child alike; ours must not fire all-or-nothing."""
    augmenter = augment.SeededAugmenter()
    image, mask = _example()
    flipped_only = 0
    for seed in range(64):
        out_image, out_mask = augmenter(image, mask, np.int64(seed))
        if np.array_equal(out_mask, mask[:, ::-1]) and not np.array_equal(
            out_image, image[:, ::-1]
        ):
            flipped_only += 1  # flipped, then a pixel transform changed the image
    assert flipped_only > 0


def _upside_down_masks(augmenter, mask, seeds=range(64)):
    """How many seeds give exactly the mask turned upside down (either way round)."""
    image = np.zeros((*mask.shape[:2], 3), np.uint8)
    upside_down = (mask[::-1], mask[::-1, ::-1])
    count = 0
    for seed in seeds:
        _, out_mask = augmenter(image, mask, np.int64(seed))
        count += any(np.array_equal(out_mask, flipped) for flipped in upside_down)
    return count


def test_vertical_flip_is_off_by_default_and_turns_masks_upside_down_when_asked():
    mask = np.zeros((48, 48, 1), np.uint8)
    mask[:10, :20] = 1  # top left: no flip or rotation of the seed's maps it upside down
    assert _upside_down_masks(augment.SeededAugmenter(), mask) == 0
    # Half the seeds flip; the seed's affine (half the time) moves some of those again.
    assert _upside_down_masks(augment.SeededAugmenter(vertical_flip=True), mask) >= 10


def _area_ratios(augmenter, seeds=range(80)):
    """Mask area after / before for a centred square that no zoom or rotation clips."""
    mask = np.zeros((96, 96, 1), np.uint8)
    mask[38:58, 38:58] = 1
    image = np.zeros((96, 96, 3), np.uint8)
    return [float(augmenter(image, mask, np.int64(seed))[1].sum()) / mask.sum() for seed in seeds]


def test_augment_strength_narrows_the_zoom():
    # Zoom 0.8-1.2 at strength 1 (areas 0.64-1.44), 0.9-1.1 at 0.5 (0.81-1.21).
    seeds_ratios = _area_ratios(augment.SeededAugmenter())
    half_ratios = _area_ratios(augment.SeededAugmenter(strength=0.5))
    assert min(half_ratios) > 0.76 and max(half_ratios) < 1.26  # slack: nearest-pixel edges
    assert min(seeds_ratios) < 0.76 or max(seeds_ratios) > 1.26


def test_transforms_are_built_once_per_parallel_call_not_per_example(monkeypatch):
    """tf.numpy_function gives each call a fresh Python thread state (thread-locals empty)."""
    builds = []
    original = augment.make_train_transform
    monkeypatch.setattr(
        augment, "make_train_transform", lambda *args: builds.append(1) or original(*args)
    )
    augmenter = augment.SeededAugmenter()
    image, mask = _example()

    def apply(seed):
        return tf.numpy_function(augmenter, [image, mask, seed], [tf.uint8, tf.uint8])

    dataset = tf.data.Dataset.range(64).map(apply, num_parallel_calls=2)
    assert sum(1 for _ in dataset) == 64
    assert 1 <= len(builds) <= 2
