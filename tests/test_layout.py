"""The folder scan: both layouts, pairing by stem, orphans, unreadable folders."""

import os
from pathlib import Path

from trainer.data import layout, manifest
from trainer.errors import UserError

import pytest

from tests.files import names, write_image, write_pair

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
    write_pair(tmp_path, "Images/1/a.png", "Masks/1/a.jpg")
    write_pair(tmp_path, "Images/1/b.JPG", "Masks/1/b_mask.png")
    write_pair(tmp_path, "Images/c.tiff", "Masks/c.bmp")  # no sub-folder: group '0'
    pairs = layout.scan(tmp_path).pairs
    assert names(pairs) == ["a.png", "b.JPG", "c.tiff"]
    assert names(pairs, "masks") == ["a.jpg", "b_mask.png", "c.bmp"]
    assert list(pairs["group"]) == ["1", "1", "0"]


def test_scan_reports_orphans_and_ignores_other_files(tmp_path):
    write_pair(tmp_path, "Images/1/a.png", "Masks/1/a.png")
    write_image(tmp_path / "Images/1/lonely.png")
    write_image(tmp_path / "Masks/1/stray.png", mode="L")
    write_image(tmp_path / "Masks/2/a.png", mode="L")  # same stem, other group: no pair
    (tmp_path / "Images/1/notes.txt").write_text("not an image")
    write_image(tmp_path / "Images/1/.hidden.png")
    result = layout.scan(tmp_path)
    assert names(result.pairs) == ["a.png"]
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


def test_scan_gives_each_mask_to_onewrite_image(tmp_path):
    # Masks saved into Images/ too: 'x_mask' keeps its exact stem, 'x' gets no second claim.
    write_pair(tmp_path, "Images/x.png", "Masks/x_mask.png")
    write_image(tmp_path / "Images/x_mask.png")
    write_pair(tmp_path, "Images/y.png", "Masks/y.png")
    write_image(tmp_path / "Masks/y_mask.png", mode="L")  # a second mask for y
    result = layout.scan(tmp_path)
    assert names(result.pairs) == ["x_mask.png", "y.png"]
    assert names(result.pairs, "masks") == ["x_mask.png", "y.png"]
    messages = {Path(p.path).relative_to(tmp_path).as_posix(): p.message for p in result.problems}
    assert messages == {
        "Images/x.png": f"no mask {tmp_path}/Masks/x.* or x_mask.*",
        "Masks/y_mask.png": "y.png pairs with y.png; ignored",
    }


def test_scan_train_valid_layout_with_and_without_groups(tmp_path):
    write_pair(tmp_path, "train/images/a.png", "train/masks/a.png")
    write_pair(tmp_path, "train/images/b.png", "train/masks/b.jpg")
    write_pair(tmp_path, "valid/images/c.png", "valid/masks/c.png")
    write_pair(tmp_path, "valid/images/left/d.png", "valid/masks/left/d.png")
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
    assert names(train) == ["a.png", "b.png"] and names(valid) == ["c.png", "d.png"]


def test_scan_train_only_is_split_by_fraction(tmp_path):
    for name in "abcde":
        write_pair(tmp_path, f"Train/Images/{name}.png", f"Train/Masks/{name}.png")
    pairs = layout.scan(tmp_path).pairs
    assert set(pairs["split"]) == {"train"}  # no pair in valid: valid is carved out of train
    train, valid = manifest.split_train_valid(pairs, valid_fraction=0.2)
    assert (len(train), len(valid)) == (4, 1)


def test_scan_turns_permission_errors_into_user_errors(tmp_path, monkeypatch):
    write_pair(tmp_path, "Images/1/a.png", "Masks/1/a.png")

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
    write_image(tmp_path / "Masks/1/a.png", mode="L")
    with pytest.raises(UserError, match="no image .* has a mask"):
        layout.scan(tmp_path)
