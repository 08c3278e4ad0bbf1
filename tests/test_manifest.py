"""The train/valid split and the CSV manifests (the folder scan: test_layout.py)."""

import os
import shutil
from pathlib import Path

from trainer.data import manifest
from trainer.errors import UserError

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.files import names, write_image, write_pair


def _copy_images_and_masks(source: Path, root: Path) -> None:
    """Copies a data set without its manifests: other tests may have prepared the shared one."""
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("csv_file"))


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
    write_pair(tmp_path, "Images/1/a.png", "Masks/1/a.png")
    write_image(tmp_path / "Images/1/b.png")
    with pytest.raises(UserError, match="valid split .* 1 usable pair.* 1 pair.* skipped"):
        manifest.prepare(tmp_path)
    write_pair(tmp_path, "valid/images/a.png", "valid/masks/a.png")
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
    write_image(root / "Masks/2/nail_00030.png", (64, 32), mode="L")
    (root / "Masks/1/nail_00001.png").unlink()
    return root


def test_prepare_leaves_out_unusable_pairs_and_writes_problems(damaged_root):
    result = manifest.prepare(damaged_root)
    kept = set(names(pd.concat([result.train, result.valid])))
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
        write_image(tmp_path / f"Masks/{name}.png", mode="L")
    report = tmp_path / "csv_file/problems.csv"
    with pytest.raises(UserError, match=f"0 usable pair.* 2 pair.* skipped .*{report}"):
        manifest.read_manifests(tmp_path)
    assert len(pd.read_csv(report)) == 2
    assert not (tmp_path / "csv_file/train.csv").exists()


# ---------------------------------------------------------------- classes


def _write_label_pairs(root: Path, count: int) -> None:
    """`count` pairs whose masks hold label indices 0, 1, 2 and the ignore label 255."""
    labels = np.repeat(np.array([0, 1, 2, 255], np.uint8), 3)[:, None].repeat(8, axis=1)
    for index in range(count):
        write_image(root / f"Images/1/{index}.png", (8, 12))
        Image.fromarray(labels).save(root / f"Masks/1/{index}.png")


def test_prepare_checks_masks_for_the_classes_given(tmp_path):
    (tmp_path / "Masks/1").mkdir(parents=True)
    _write_label_pairs(tmp_path, 4)
    # As binary masks they are unusable, and the empty split says why.
    with pytest.raises(UserError) as raised:
        manifest.prepare(tmp_path)
    message = str(raised.value)
    assert "0 usable pair(s) found, 4 pair(s) or file(s) skipped" in message
    assert "the most common error (4 file(s), e.g. " in message
    assert "mask holds label values 0, 1, 2 and 255" in message
    assert "--config.model.num_classes=3 to train (and --num_classes=3 to prepare)" in message
    assert not (tmp_path / "csv_file/train.csv").exists()
    # read_manifests prepares them for the classes it is given.
    train, valid = manifest.read_manifests(tmp_path, num_classes=3, ignore_label=255)
    assert (len(train), len(valid)) == (3, 1)
    assert len(pd.read_csv(tmp_path / "csv_file/problems.csv")) == 0
    result = manifest.prepare(tmp_path, num_classes=3, ignore_label=255)
    assert (len(result.train), len(result.valid), result.problems) == (3, 1, [])
