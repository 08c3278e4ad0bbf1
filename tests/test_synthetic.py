"""Tests of the synthetic nail data set and its entry point."""

import subprocess
import sys
from pathlib import Path

from trainer.data import synthetic
from trainer.errors import UserError

import cv2
import numpy as np
import pytest


def _files(root):
    return sorted(path for path in root.rglob("*.png"))


def test_same_seed_writes_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        synthetic.write_dataset(tmp_path / name, num_images=6, image_size=48, seed=seed)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    relative = [path.relative_to(tmp_path / "a") for path in a]
    assert relative == [path.relative_to(tmp_path / "b") for path in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    images = [path for path in relative if path.parts[0] == "Images"]
    assert all(
        (tmp_path / "a" / p).read_bytes() != (tmp_path / "c" / p).read_bytes() for p in images
    )


def test_group_counts_unequal_and_exact():
    assert synthetic.group_counts(48) == {1: 19, 2: 12, 3: 10, 4: 7}
    assert synthetic.group_counts(400) == {1: 160, 2: 100, 3: 80, 4: 60}
    for total in range(1, 30):
        assert sum(synthetic.group_counts(total).values()) == total


def test_layout_and_group_counts(synthetic_root):
    for group, count in synthetic.group_counts(48).items():
        images = sorted(p.name for p in (synthetic_root / "Images" / str(group)).glob("*.png"))
        masks = sorted(p.name for p in (synthetic_root / "Masks" / str(group)).glob("*.png"))
        assert len(images) == count
        assert images == masks


def test_files_decode_with_the_right_shapes_values_and_coverage(synthetic_root):
    for mask_path in (synthetic_root / "Masks").rglob("*.png"):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        image_path = synthetic_root / "Images" / mask_path.relative_to(synthetic_root / "Masks")
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert synthetic.MIN_COVERAGE <= (mask > 0).mean() <= synthetic.MAX_COVERAGE


@pytest.mark.parametrize("group", synthetic.GROUPS)
def test_render_example_per_group(group):
    image, mask = synthetic.render_example(np.random.default_rng(group), group, 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8
    assert 0.03 <= (mask > 0).mean() <= 0.35
    # Nails differ from their surroundings; the image is not flat either.
    assert image.std() > 5


def test_groups_differ_in_brightness_and_nail_count():
    def stats(group):
        examples = [
            synthetic.render_example(np.random.default_rng([7, i]), group, 96) for i in range(6)
        ]
        brightness = np.mean([image.mean() for image, _ in examples])
        nails = np.mean([cv2.connectedComponents(mask)[0] - 1 for _, mask in examples])
        return brightness, nails

    (bright_1, nails_1), (_, nails_2), (bright_3, _) = stats(1), stats(2), stats(3)
    assert bright_3 < bright_1
    assert nails_2 > nails_1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_images=0, image_size=64, seed=0),
        dict(num_images=4, image_size=8, seed=0),
        dict(num_images=4, image_size=64, seed=-1),
    ],
)
def test_bad_arguments_raise_user_error(tmp_path, kwargs):
    with pytest.raises(UserError):
        synthetic.write_dataset(tmp_path, **kwargs)


def test_unwritable_output_raises_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="file"):
        synthetic.write_dataset(blocker, num_images=2, image_size=32, seed=0)


def test_entry_point_writes_the_data_set(tmp_path):
    command = [sys.executable, "-m", "trainer.synthetic", f"--output_dir={tmp_path}"]
    command += ["--num_images=4", "--image_size=32"]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1]
    )
    assert completed.returncode == 0, completed.stderr
    assert len(_files(tmp_path / "Images")) == 4
    assert len(_files(tmp_path / "Masks")) == 4
