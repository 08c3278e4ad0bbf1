"""The seed's training augmentations, written for albumentations 2.x.

The seed (albumentations 1.x) augmented full-size photos and resized last; we
resize first (in TensorFlow, in the pipeline) and augment at the training size,
which gives the same distribution of outputs for a fraction of the work.

Each example carries its own seed, so an example's augmentation depends only on
its position in the data stream: a resumed run sees the same augmented images
as an uninterrupted one, whatever the thread interleaving of `tf.data`.
"""

import queue
import random

import albumentations as A
import cv2
import numpy as np

# The seed's GaussNoise(var_limit=(0, 50)) on 0..255 images; 2.x takes the standard
# deviation as a fraction of the maximum value instead of the variance.
_NOISE_STD_RANGE = (0.0, float(np.sqrt(50.0)) / 255.0)


def make_train_transform(vertical_flip: bool = False, strength: float = 1.0) -> A.Compose:
    """Returns the seed's training transforms (without its final Resize).

    Args:
        vertical_flip: also flip upside down half the time (`data.vertical_flip`), for
            photos without an up, such as endoscopy, microscopy or aerial views.
        strength: `data.augment_strength`, how far each transform goes: 1 is the
            seed's ranges; 0.5 halves the zoom, rotation, noise, blur and colour
            ranges. Each transform still fires as often as in the seed.

    Returns:
        An `albumentations.Compose` taking `image` uint8 `[h, w, 3]` and `mask`
        uint8 `[h, w]` and keeping their size.
    """
    flips = [A.HorizontalFlip(p=0.5)]
    if vertical_flip:
        flips.append(A.VerticalFlip(p=0.5))
    noise_low, noise_high = _NOISE_STD_RANGE
    return A.Compose(
        [
            *flips,
            # ShiftScaleRotate(shift 0, scale 0.2, rotate 30, black border) in 1.x.
            A.Affine(
                scale=(1 - 0.2 * strength, 1 + 0.2 * strength),
                rotate=(-30 * strength, 30 * strength),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
            A.GaussNoise(std_range=(noise_low * strength, noise_high * strength), p=0.4),
            A.GaussianBlur(
                blur_limit=(3, _odd_kernel(7 * strength)),
                sigma_limit=(0.5, max(0.5, 3.0 * strength)),  # 2.x's default at strength 1
                p=0.4,
            ),
            A.OneOf(
                [
                    A.HueSaturationValue(
                        hue_shift_limit=10 * strength,
                        sat_shift_limit=15 * strength,
                        val_shift_limit=15 * strength,
                        p=1.0,
                    ),
                    A.CLAHE(clip_limit=(1, 1 + strength), p=1.0),
                    A.RandomBrightnessContrast(
                        brightness_limit=0.15 * strength, contrast_limit=0.3 * strength, p=1.0
                    ),
                ],
                p=0.3,
            ),
        ]
    )


def _odd_kernel(size: float) -> int:
    """The nearest odd kernel size of at least 3 px."""
    return max(3, 2 * round((size - 1) / 2) + 1)


def _seed_tree(transform, seed_sequence: np.random.SeedSequence) -> None:
    """Gives every transform in the tree its own random stream.

    albumentations 2.0's `Compose.set_random_seed` hands the same seed to every
    child, so all of them draw the same first number and fire together or not
    at all (measured: 3 of 6 seeds left the image untouched). Independent child
    streams restore the intended probabilities.
    """
    own, *children = seed_sequence.spawn(1 + len(getattr(transform, "transforms", ())))
    own_seed = int(own.generate_state(1)[0])
    transform.seed = own_seed
    transform.random_generator = np.random.default_rng(own)
    transform.py_random = random.Random(own_seed)
    for child, child_sequence in zip(getattr(transform, "transforms", ()), children):
        _seed_tree(child, child_sequence)


class SeededAugmenter:
    """Applies the training transforms with a seed given per example.

    albumentations transforms hold their random generators as state, so
    parallel `tf.data` calls must not share one `Compose`: each call borrows
    one from a pool and gives it back, and the pool grows to the number of
    concurrent calls. (Not `threading.local`: `tf.numpy_function` runs each
    call under a fresh Python thread state, which empties thread-local storage,
    so a Compose would be built for every example: 0.7 ms each.)
    """

    def __init__(self, vertical_flip: bool = False, strength: float = 1.0):
        self._idle = queue.SimpleQueue()
        self._vertical_flip = vertical_flip
        self._strength = strength

    def _borrow(self) -> A.Compose:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            # tf.data already runs one call per core; OpenCV's own threads would oversubscribe.
            cv2.setNumThreads(1)
            return make_train_transform(self._vertical_flip, self._strength)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: np.int64):
        """Augments one example.

        Args:
            image: uint8 `[height, width, 3]`.
            mask: uint8 `[height, width, 1]` in {0, 1}.
            seed: this example's seed.

        Returns:
            The augmented `(image, mask)`, same shapes and dtypes.
        """
        transform = self._borrow()
        try:
            _seed_tree(transform, np.random.SeedSequence(int(seed) % (2**63)))
            out = transform(image=image, mask=mask[..., 0])
        finally:
            self._idle.put(transform)
        return out["image"], out["mask"][..., None]
