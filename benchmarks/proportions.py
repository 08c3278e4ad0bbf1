"""A real data set of square photos, cut to mixed proportions: for measuring `data.resize`.

Kvasir-SEG (like many published sets) was stretched to squares by its
distributors, where `data.resize=pad` and `stretch` are the same operation.
Cutting each pair to a window of its own seeded proportions (width / height
between 1/2 and 2, log-uniform, as large as the photo allows, at a seeded
position) gives real photos of mixed proportions, as a folder of phone photos
has, on which the resize modes differ.

The windows are written as PNG (no second lossy compression) to a scratch
folder, never next to the user's data.
"""

import zlib
from pathlib import Path

import numpy as np

# Width / height of the windows: log-uniform between these.
MIN_ASPECT, MAX_ASPECT = 0.5, 2.0
_SEED = 20261201


def window(width: int, height: int, name: str) -> tuple[int, int, int, int]:
    """The `(left, top, right, bottom)` window of the photo called `name`, seeded by its name."""
    rng = np.random.default_rng([_SEED, zlib.crc32(name.encode())])
    aspect = float(np.exp(rng.uniform(np.log(MIN_ASPECT), np.log(MAX_ASPECT))))
    if aspect >= width / height:
        cut_width, cut_height = width, max(1, round(width / aspect))
    else:
        cut_width, cut_height = max(1, round(height * aspect)), height
    left = int(rng.integers(0, width - cut_width + 1))
    top = int(rng.integers(0, height - cut_height + 1))
    return left, top, left + cut_width, top + cut_height


def cut_split(pairs, folder: Path) -> None:
    """Writes FOLDER/images and FOLDER/masks: each pair of `pairs` cut to its window.

    Args:
      pairs: a `layout.scan(...).pairs` frame (columns `images`, `masks`).
      folder: where the split goes; created.
    """
    from PIL import Image, ImageOps

    for column in ("images", "masks"):
        (folder / column).mkdir(parents=True)
    for image_path, mask_path in zip(pairs["images"], pairs["masks"]):
        stem = Path(image_path).stem
        # Upright as the trainer reads it, so that the mask's frame is the photo's.
        image = ImageOps.exif_transpose(Image.open(image_path)).convert("RGB")
        mask = Image.open(mask_path)
        if mask.size != image.size:
            raise ValueError(f"{mask_path} is {mask.size}, its photo {image.size}: check the set")
        box = window(*image.size, stem)
        image.crop(box).save(folder / "images" / f"{stem}.png")
        mask.crop(box).save(folder / "masks" / f"{stem}.png")
