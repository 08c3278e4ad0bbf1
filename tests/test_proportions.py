"""benchmarks/proportions.py: square photos cut to mixed proportions, masks cut alike."""

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks import proportions


def test_windows_are_seeded_inside_the_photo_and_of_mixed_proportions():
    boxes = [proportions.window(352, 352, f"photo_{i}") for i in range(40)]
    assert boxes == [proportions.window(352, 352, f"photo_{i}") for i in range(40)]
    aspects = []
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 352 and 0 <= top < bottom <= 352
        assert right - left == 352 or bottom - top == 352  # as large as the photo allows
        aspects.append((right - left) / (bottom - top))
    assert min(aspects) >= proportions.MIN_ASPECT - 0.01
    assert max(aspects) <= proportions.MAX_ASPECT + 0.01
    assert min(aspects) < 0.8 and max(aspects) > 1.25  # portrait and landscape both


def test_cut_split_cuts_each_mask_with_its_photo(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        mask = np.where(pixels[..., 0] > 127, 255, 0).astype(np.uint8)
        rows.append((tmp_path / f"p{i}.jpg", tmp_path / f"p{i}_mask.png"))
        Image.fromarray(pixels).save(rows[-1][0], quality=100)
        Image.fromarray(mask).save(rows[-1][1])
    pairs = pd.DataFrame({"images": [str(r[0]) for r in rows], "masks": [str(r[1]) for r in rows]})

    proportions.cut_split(pairs, tmp_path / "train")

    for image_path, mask_path in rows:
        box = proportions.window(64, 64, image_path.stem)
        cut_image = np.asarray(Image.open(tmp_path / "train" / "images" / f"{image_path.stem}.png"))
        cut_mask = np.asarray(Image.open(tmp_path / "train" / "masks" / f"{image_path.stem}.png"))
        expected_mask = np.asarray(Image.open(mask_path).crop(box))
        np.testing.assert_array_equal(cut_mask, expected_mask)
        assert cut_image.shape[:2] == cut_mask.shape == (box[3] - box[1], box[2] - box[0])
