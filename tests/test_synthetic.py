"""Tests of the synthetic nail data set and its entry point."""

import hashlib
import subprocess
import sys
from pathlib import Path

from trainer.data import synthetic
from trainer.errors import UserError

import cv2
import numpy as np
import pytest

# Recorded with the code before `num_classes` existed (commit f593002) from
# `write_dataset(num_images=8, image_size=64, seed=0)`: the files' relative paths
# and decoded pixels, not the PNG bytes, so that another cv2 encoder cannot fail it.
_BINARY_PIXELS_SHA256 = "6adb80f45b2e57578312ea8e0b627cedc37507f5e4aa4df4659749ced4321194"


def _files(root):
    return sorted(path for path in root.rglob("*.png"))


def _pixel_digest(root):
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).tobytes())
    return digest.hexdigest()


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


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


def test_binary_default_is_unchanged_by_num_classes(tmp_path):
    synthetic.write_dataset(tmp_path, num_images=8, image_size=64, seed=0)
    assert _pixel_digest(tmp_path) == _BINARY_PIXELS_SHA256


def test_three_class_masks_split_the_binary_nails_into_nail_and_tip(tmp_path):
    kwargs = dict(num_images=8, image_size=64, seed=0)
    synthetic.write_dataset(tmp_path / "binary", **kwargs)
    synthetic.write_dataset(tmp_path / "three", num_classes=3, **kwargs)
    binary, three = _files(tmp_path / "binary"), _files(tmp_path / "three")
    assert [p.relative_to(tmp_path / "binary") for p in binary] == [
        p.relative_to(tmp_path / "three") for p in three
    ]
    seen = set()
    for path in (tmp_path / "three" / "Masks").rglob("*.png"):
        relative = path.relative_to(tmp_path / "three" / "Masks")
        mask, nails = _read(path), _read(tmp_path / "binary" / "Masks" / relative) > 0
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {synthetic.BACKGROUND, synthetic.NAIL, synthetic.TIP}
        seen |= set(np.unique(mask).tolist())
        np.testing.assert_array_equal(mask > 0, nails)
        assert 0.15 <= (mask == synthetic.TIP).sum() / nails.sum() <= 0.40
        # The same scene: away from the nails only the contrast's mean shifts a little.
        image = _read(tmp_path / "three" / "Images" / relative).astype(int)
        binary_image = _read(tmp_path / "binary" / "Images" / relative)
        far = cv2.dilate(nails.astype(np.uint8), np.ones((7, 7), np.uint8)) == 0
        assert np.abs(image - binary_image)[far].max() <= 3
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("group", synthetic.GROUPS)
def test_tip_band_is_drawn_in_its_own_colour(group):
    erode = np.ones((3, 3), np.uint8)
    for seed in range(2):
        rng = np.random.default_rng([group, seed])
        image, mask = synthetic.render_example(rng, group, 96, num_classes=3)
        count, nails = cv2.connectedComponents((mask > 0).astype(np.uint8))
        # Eroded, so that the anti-aliased edges between the parts do not blur the means.
        tip = cv2.erode((mask == synthetic.TIP).astype(np.uint8), erode) > 0
        plate = cv2.erode((mask == synthetic.NAIL).astype(np.uint8), erode) > 0
        for nail in range(1, count):
            tip_pixels = image[tip & (nails == nail)].astype(float)
            plate_pixels = image[plate & (nails == nail)].astype(float)
            if len(tip_pixels) >= 4 and len(plate_pixels) >= 4:
                difference = tip_pixels.mean(axis=0) - plate_pixels.mean(axis=0)
                assert np.linalg.norm(difference) > 12


@pytest.mark.parametrize("num_classes", [0, 2, 5])
def test_bad_num_classes_raises_user_error_and_writes_nothing(tmp_path, num_classes):
    with pytest.raises(UserError, match="--num_classes must be 1 .* or 3"):
        synthetic.write_dataset(
            tmp_path / "out", num_images=2, image_size=32, seed=0, num_classes=num_classes
        )
    assert not (tmp_path / "out").exists()


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


def _run_entry_point(*args):
    command = [sys.executable, "-m", "trainer.synthetic", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1]
    )


@pytest.mark.parametrize("num_classes, values", [(1, {0, 255}), (3, {0, 1, 2})])
def test_entry_point_writes_the_data_set(tmp_path, num_classes, values):
    completed = _run_entry_point(
        f"--output_dir={tmp_path}",
        "--num_images=4",
        "--image_size=32",
        f"--num_classes={num_classes}",
    )
    assert completed.returncode == 0, completed.stderr
    assert len(_files(tmp_path / "Images")) == 4
    masks = _files(tmp_path / "Masks")
    assert len(masks) == 4
    assert set(np.unique([_read(path) for path in masks]).tolist()) <= values


def test_entry_point_rejects_other_num_classes_in_one_line(tmp_path):
    completed = _run_entry_point(f"--output_dir={tmp_path / 'out'}", "--num_classes=5")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "error: --num_classes must be 1 (nail masks) or 3 (background, nail, tip), got 5"
    ]
    assert not (tmp_path / "out").exists()
