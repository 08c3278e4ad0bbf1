"""Tests of scanning, splitting and the CSV manifests."""

import os
import shutil
from pathlib import Path

from trainer.data import layout, manifest
from trainer.errors import UserError

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def _image(path: Path, size=(8, 6), *, value=None, mode="RGB") -> Path:
    """Writes a small image; masks get `value` everywhere (or a half-foreground pattern)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        pixels = np.zeros(size[::-1], np.uint8)
        pixels[: size[1] // 2] = 255
        if value is not None:
            pixels[:] = value
    else:
        pixels = np.full((*size[::-1], 3), 120, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _pair(root: Path, image: str, mask: str, **mask_kwargs) -> None:
    _image(root / image)
    _image(root / mask, mode="L", **mask_kwargs)


def _copy_images_and_masks(source: Path, root: Path) -> None:
    """Copies a data set without its manifests: other tests may have prepared the shared one."""
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("csv_file"))


def _names(frame: pd.DataFrame, column="images") -> list[str]:
    return [Path(path).name for path in frame[column]]


# ---------------------------------------------------------------- scan


def test_scan_seed_layout(synthetic_root):
    result = layout.scan(synthetic_root)
    assert result.layout == "images_masks" and result.problems == []
    assert result.pairs["group"].value_counts().to_dict() == {"1": 19, "2": 12, "3": 10, "4": 7}
    assert set(result.pairs["split"]) == {""}
    assert all(os.path.isabs(path) for path in result.pairs["images"])
    for image, mask in zip(result.pairs["images"], result.pairs["masks"], strict=True):
        assert Path(image).name == Path(mask).name


def test_scan_pairs_by_stem_across_extensions_and_mask_suffix(tmp_path):
    _pair(tmp_path, "Images/1/a.png", "Masks/1/a.jpg")
    _pair(tmp_path, "Images/1/b.JPG", "Masks/1/b_mask.png")
    _pair(tmp_path, "Images/c.tiff", "Masks/c.bmp")  # no sub-folder: group '0'
    pairs = layout.scan(tmp_path).pairs
    assert _names(pairs) == ["a.png", "b.JPG", "c.tiff"]
    assert _names(pairs, "masks") == ["a.jpg", "b_mask.png", "c.bmp"]
    assert list(pairs["group"]) == ["1", "1", "0"]


def test_scan_reports_orphans_and_ignores_other_files(tmp_path):
    _pair(tmp_path, "Images/1/a.png", "Masks/1/a.png")
    _image(tmp_path / "Images/1/lonely.png")
    _image(tmp_path / "Masks/1/stray.png", mode="L")
    _image(tmp_path / "Masks/2/a.png", mode="L")  # same stem, other group: no pair
    (tmp_path / "Images/1/notes.txt").write_text("not an image")
    _image(tmp_path / "Images/1/.hidden.png")
    result = layout.scan(tmp_path)
    assert _names(result.pairs) == ["a.png"]
    found = {Path(p.path).relative_to(tmp_path).as_posix(): p for p in result.problems}
    assert set(found) == {
        "Images/1/lonely.png",
        "Masks/1/stray.png",
        "Masks/2/a.png",
        "Images/1/notes.txt",
    }
    assert "no mask" in found["Images/1/lonely.png"].message
    assert "no image" in found["Masks/1/stray.png"].message
    assert found["Images/1/notes.txt"].severity == "note"
    assert "ignored" in found["Images/1/notes.txt"].message
    orphans = [p for p in result.problems if not p.path.endswith(".txt")]
    assert all(p.severity == "error" for p in orphans)


def test_scan_gives_each_mask_to_one_image(tmp_path):
    # Masks saved into Images/ too: 'x_mask' keeps its exact stem, 'x' gets no second claim.
    _pair(tmp_path, "Images/x.png", "Masks/x_mask.png")
    _image(tmp_path / "Images/x_mask.png")
    _pair(tmp_path, "Images/y.png", "Masks/y.png")
    _image(tmp_path / "Masks/y_mask.png", mode="L")  # a second mask for y
    result = layout.scan(tmp_path)
    assert _names(result.pairs) == ["x_mask.png", "y.png"]
    assert _names(result.pairs, "masks") == ["x_mask.png", "y.png"]
    messages = {Path(p.path).relative_to(tmp_path).as_posix(): p.message for p in result.problems}
    assert messages == {
        "Images/x.png": f"no mask {tmp_path}/Masks/x.* or x_mask.*",
        "Masks/y_mask.png": "y.png pairs with y.png; ignored",
    }


def test_scan_train_valid_layout_with_and_without_groups(tmp_path):
    _pair(tmp_path, "train/images/a.png", "train/masks/a.png")
    _pair(tmp_path, "train/images/b.png", "train/masks/b.jpg")
    _pair(tmp_path, "valid/images/c.png", "valid/masks/c.png")
    _pair(tmp_path, "valid/images/left/d.png", "valid/masks/left/d.png")
    result = layout.scan(tmp_path)
    assert result.layout == "train_valid"
    rows = {Path(i).name: (g, s) for i, g, s in result.pairs[["images", "group", "split"]].values}
    assert rows == {
        "a.png": ("all", "train"),
        "b.png": ("all", "train"),
        "c.png": ("all", "valid"),
        "d.png": ("left", "valid"),
    }
    train, valid = manifest.split_train_valid(result.pairs)
    assert _names(train) == ["a.png", "b.png"] and _names(valid) == ["c.png", "d.png"]


def test_scan_train_only_is_split_by_fraction(tmp_path):
    for name in "abcde":
        _pair(tmp_path, f"Train/Images/{name}.png", f"Train/Masks/{name}.png")
    pairs = layout.scan(tmp_path).pairs
    assert set(pairs["split"]) == {"train"}  # no pair in valid: valid is carved out of train
    train, valid = manifest.split_train_valid(pairs, valid_fraction=0.2)
    assert (len(train), len(valid)) == (4, 1)


def test_scan_turns_permission_errors_into_user_errors(tmp_path, monkeypatch):
    _pair(tmp_path, "Images/1/a.png", "Masks/1/a.png")

    def unreadable(folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(layout, "_index_files", unreadable)
    with pytest.raises(UserError, match=r"cannot read .*Images \(permission denied\)"):
        layout.scan(tmp_path)


def test_scan_errors(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        layout.scan(tmp_path / "missing")
    with pytest.raises(UserError, match="Images/ \\+ Masks/"):
        layout.scan(tmp_path)  # empty folder
    (tmp_path / "photos").mkdir()
    with pytest.raises(UserError, match="train/images/"):
        layout.scan(tmp_path)  # unknown layout
    (tmp_path / "Images").mkdir()
    _image(tmp_path / "Masks/1/a.png", mode="L")
    with pytest.raises(UserError, match="no image .* has a mask"):
        layout.scan(tmp_path)


# ---------------------------------------------------------------- split


def _frame(counts: dict[str, int]) -> pd.DataFrame:
    rows = [
        (f"/d/Images/{group}/{i:03d}.png", f"/d/Masks/{group}/{i:03d}.png", group)
        for group, count in counts.items()
        for i in range(count)
    ]
    return pd.DataFrame(rows, columns=["images", "masks", "group"])


def test_split_is_stratified_and_deterministic():
    pairs = _frame({"1": 40, "2": 25, "3": 20, "4": 15, "5": 2, "6": 1})
    train, valid = manifest.split_train_valid(pairs, valid_fraction=0.2, seed=3)
    # round(0.2 * n), halves up, >= 1 for n >= 2, 0 for a group of one.
    expected = {"1": 8, "2": 5, "3": 4, "4": 3, "5": 1}
    assert valid["group"].value_counts().to_dict() == expected
    assert set(train["group"]) == {"1", "2", "3", "4", "5", "6"}
    assert len(train) + len(valid) == len(pairs)
    assert not set(train["images"]) & set(valid["images"])
    again_train, again_valid = manifest.split_train_valid(
        pairs.sample(frac=1, random_state=1), valid_fraction=0.2, seed=3
    )
    pd.testing.assert_frame_equal(valid, again_valid)
    pd.testing.assert_frame_equal(train, again_train)
    _, other = manifest.split_train_valid(pairs, valid_fraction=0.2, seed=4)
    assert list(other["images"]) != list(valid["images"])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(UserError, match="valid_fraction"):
        manifest.split_train_valid(_frame({"1": 4}), valid_fraction=fraction)


# ---------------------------------------------------------------- csv files


def test_prepare_writes_relative_paths_and_read_returns_absolute(synthetic_root, tmp_path):
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    result = manifest.prepare(root)
    assert result.csv_dir == root / "csv_file"
    written = pd.read_csv(root / "csv_file/train.csv", dtype=str)
    assert list(written.columns) == ["images", "masks", "group"]
    assert written["images"].str.startswith("Images/").all()
    assert written["masks"].str.startswith("Masks/").all()
    assert len(written) + len(pd.read_csv(root / "csv_file/valid.csv")) == 48

    moved = tmp_path / "moved"
    root.rename(moved)  # as if mounted elsewhere: the manifests still hold
    train, valid = manifest.read_manifests(moved)
    assert len(train) == len(result.train) and len(valid) == len(result.valid)
    assert all(path.startswith(str(moved)) for path in train["images"])
    assert all(os.path.isfile(path) for path in pd.concat([train, valid])["masks"])
    assert set(valid["group"]) == {"1", "2", "3", "4"}


def test_read_manifests_prepares_when_missing(synthetic_root, tmp_path):
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    train, valid = manifest.read_manifests(root, valid_fraction=0.25, seed=1)
    assert (root / "csv_file/train.csv").is_file()
    # Groups of 19, 12, 10, 7: 4.75, 3, 2.5, 1.75 rounded half up.
    assert len(valid) == 5 + 3 + 3 + 2 and len(train) == 48 - 13


def test_read_only_root_falls_back(synthetic_root, tmp_path):
    # A file where csv_file/ would go fails like a read-only mount does, even as root.
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    (root / "csv_file").write_text("in the way")
    with pytest.raises(UserError, match="cannot write the manifests"):
        manifest.prepare(root)
    workdir = tmp_path / "work"
    result = manifest.prepare(root, fallback_dir=workdir)
    assert result.csv_dir == workdir / "csv_file"
    train, valid = manifest.read_manifests(root, fallback_dir=workdir)
    assert len(train) + len(valid) == 48
    assert train["images"].iloc[0].startswith(str(root))


def test_read_only_root_falls_back_when_not_writable(synthetic_root, tmp_path, monkeypatch):
    root, workdir = tmp_path / "data", tmp_path / "work"
    _copy_images_and_masks(synthetic_root, root)
    writable = manifest._is_writable_dir
    monkeypatch.setattr(manifest, "_is_writable_dir", lambda d: d.parent != root and writable(d))
    train, _ = manifest.read_manifests(root, fallback_dir=workdir)
    assert (workdir / "csv_file/valid.csv").is_file() and not (root / "csv_file").exists()
    assert len(train) > 0


def test_missing_file_in_manifest_raises(synthetic_root, tmp_path):
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    train, _ = manifest.read_manifests(root)
    Path(train["masks"].iloc[0]).unlink()
    with pytest.raises(UserError, match="train.csv.*do not exist.*delete .*csv_file"):
        manifest.read_manifests(root)


def test_empty_valid_split_raises(synthetic_root, tmp_path):
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    train, _ = manifest.read_manifests(root)
    manifest.write_manifests(train, train.iloc[:0], root / "csv_file")
    with pytest.raises(UserError, match="valid.csv lists no pairs"):
        manifest.read_manifests(root)


def test_prepare_rejects_an_empty_split(tmp_path):
    _pair(tmp_path, "Images/1/a.png", "Masks/1/a.png")
    _image(tmp_path / "Images/1/b.png")
    with pytest.raises(UserError, match="valid split .* 1 usable pair.* 1 pair.* skipped"):
        manifest.prepare(tmp_path)
    _pair(tmp_path, "valid/images/a.png", "valid/masks/a.png")
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/masks").mkdir()
    shutil.rmtree(tmp_path / "Images")
    with pytest.raises(UserError, match="train split"):
        manifest.prepare(tmp_path)


def test_read_manifests_missing_root(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        manifest.read_manifests(tmp_path / "nowhere")


# ---------------------------------------------------------------- unusable pairs


@pytest.fixture
def damaged_root(synthetic_root, tmp_path):
    """The synthetic set with one corrupt image, one rotated mask and one image without a mask."""
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    (root / "Images/2/nail_00020.png").write_bytes(b"truncated")
    _image(root / "Masks/2/nail_00030.png", (64, 32), mode="L")
    (root / "Masks/1/nail_00001.png").unlink()
    return root


def test_prepare_leaves_out_unusable_pairs_and_writes_problems(damaged_root):
    result = manifest.prepare(damaged_root)
    kept = set(_names(pd.concat([result.train, result.valid])))
    assert len(kept) == 45 and not kept & {"nail_00020.png", "nail_00030.png", "nail_00001.png"}
    assert result.num_skipped == 3
    assert result.problems_csv == damaged_root / "csv_file/problems.csv"
    report = pd.read_csv(result.problems_csv, dtype=str)
    assert list(report.columns) == ["path", "severity", "message"]
    assert {Path(p).relative_to(damaged_root).as_posix() for p in report["path"]} == {
        "Images/2/nail_00020.png",
        "Masks/2/nail_00030.png",
        "Images/1/nail_00001.png",
    }
    assert set(report["severity"]) == {"error"}


def test_read_manifests_logs_one_line_for_the_skipped(damaged_root, caplog):
    caplog.set_level("INFO")
    train, valid = manifest.read_manifests(damaged_root)
    assert len(train) + len(valid) == 45
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    report = damaged_root / "csv_file/problems.csv"
    assert warnings == [f"Skipped 3 unusable image/mask pairs; the list is in {report}"]


def test_read_manifests_is_silent_when_nothing_is_skipped(synthetic_root, tmp_path, caplog):
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    manifest.read_manifests(root)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(pd.read_csv(root / "csv_file/problems.csv")) == 0


def test_existing_manifests_are_read_without_a_new_check(damaged_root, monkeypatch):
    manifest.read_manifests(damaged_root)
    monkeypatch.setattr(manifest.check, "check_pairs", lambda *a, **k: pytest.fail("rechecked"))
    train, valid = manifest.read_manifests(damaged_root)
    assert len(train) + len(valid) == 45


def test_nothing_usable_left_is_a_user_error(tmp_path):
    for name in "ab":
        (tmp_path / f"Images/{name}.png").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"Images/{name}.png").write_bytes(b"not an image")
        _image(tmp_path / f"Masks/{name}.png", mode="L")
    report = tmp_path / "csv_file/problems.csv"
    with pytest.raises(UserError, match=f"0 usable pair.* 2 pair.* skipped .*{report}"):
        manifest.read_manifests(tmp_path)
    assert len(pd.read_csv(report)) == 2
    assert not (tmp_path / "csv_file/train.csv").exists()
