"""Property tests of scanning and preparing: generated data trees, good and bad.

Each example writes a small tree of tiny images in one of the two layouts, with
odd file names (spaces, unicode, dots, CSV quoting characters), several
extensions, nested group folders, missing partners and corrupt files, then
prepares its manifests. Whatever the tree, `prepare` either raises a UserError
or keeps exactly the usable pairs, each a real image/mask pair that the
trainer's decoders read; nothing is dropped without a line in problems.csv.
"""

import dataclasses
import io
import os
import tempfile
from pathlib import Path

from trainer.data import decode, manifest
from trainer.data import layout as layout_lib
from trainer.errors import UserError

import numpy as np
import pandas as pd
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_FORMATS = {"png": "PNG", "jpg": "JPEG", "JPG": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "tif": "TIFF"}
_EXTENSIONS = [*_FORMATS, "txt"]
# Kinds of file content: `squashed` and `half` masks have other proportions or another scale.
_IMAGE_KINDS = ["ok", "ok", "ok", "garbage", "truncated"]
_MASK_KINDS = ["ok", "ok", "ok", "garbage", "truncated", "squashed", "half"]

_name_characters = st.characters(
    codec="utf-8", exclude_categories=("Cs",), exclude_characters="/\x00"
)
_names = st.text(_name_characters, min_size=1, max_size=10).filter(
    lambda name: not name.startswith(".") and not name.endswith(layout_lib.MASK_SUFFIX)
)
# Mostly a few shared group folders (a group needs 2 pairs to give one to valid), some random.
_folders = st.one_of(
    st.sampled_from(["", "1", "1/deeper", "grp é", "2 x.y/z"]),
    st.lists(_names, max_size=2).map(lambda parts: "/".join(parts)),
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One would-be pair: which files exist, with which content."""

    stem: str
    folder: str  # relative to the images (and masks) folder; '' for none
    split: str  # 'train' or 'valid' in the train/valid layout, else ''
    image_ext: str | None
    mask_ext: str | None
    mask_suffix: bool
    image_kind: str
    mask_kind: str
    size: tuple[int, int]  # width, height


def _entries(layout: str):
    splits = (
        st.sampled_from(["train", "train", "valid"]) if layout == "train_valid" else st.just("")
    )
    fields = dict(
        stem=_names,
        folder=_folders,
        split=splits,
        mask_suffix=st.booleans(),
        size=st.tuples(st.sampled_from([2, 4, 6]), st.sampled_from([4, 6, 8])),
    )
    likely_good = st.builds(
        Entry,
        image_ext=st.sampled_from(["png", "jpg", "JPG", "jpeg", "bmp"]),
        mask_ext=st.sampled_from(["png", "png", "jpg", "JPG", "jpeg"]),
        image_kind=st.just("ok"),
        mask_kind=st.sampled_from(["ok", "ok", "half"]),
        **fields,
    )
    anything = st.builds(
        Entry,
        image_ext=st.none() | st.sampled_from(_EXTENSIONS),
        mask_ext=st.none() | st.sampled_from(_EXTENSIONS),
        image_kind=st.sampled_from(_IMAGE_KINDS),
        mask_kind=st.sampled_from(_MASK_KINDS),
        **fields,
    )
    # Stems unique per folder (compared without case, for case-insensitive file systems).
    return st.lists(
        st.one_of(likely_good, anything),
        min_size=1,
        max_size=10,
        unique_by=lambda e: (e.split, e.folder, e.stem.lower()),
    )


_trees = st.sampled_from(["images_masks", "train_valid"]).flatmap(
    lambda layout: st.tuples(st.just(layout), _entries(layout), st.booleans())
)


# ---------------------------------------------------------------- writing the tree


def _side_dirs(root: Path, layout: str, split: str, lower: bool) -> tuple[Path, Path]:
    if layout == "images_masks":
        names = ("images", "masks") if lower else ("Images", "Masks")
        return root / names[0], root / names[1]
    split_dir = root / (split.capitalize() if lower else split)
    return split_dir / ("Images" if lower else "images"), split_dir / "masks"


def _encode(pixels: np.ndarray, ext: str) -> bytes:
    if ext == "txt":
        return b"just some notes"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=_FORMATS[ext])
    return buffer.getvalue()


def _content(kind: str, ext: str, pixels: np.ndarray) -> bytes:
    if kind == "garbage":
        return b"\x00\x01 not an image at all"
    data = _encode(pixels, ext)
    return data[: len(data) // 2] if kind == "truncated" else data


def _mask_pixels(entry: Entry, rng: np.random.Generator) -> np.ndarray:
    width, height = entry.size
    if entry.mask_kind == "squashed":
        height //= 2
    elif entry.mask_kind == "half":
        width, height = width // 2, height // 2
    return (rng.random((height, width)) > 0.5).astype(np.uint8) * 255


def _write_tree(root: Path, layout: str, entries: list[Entry], lower: bool) -> dict:
    """Writes the tree; returns {entry: (image path or None, mask path or None)}."""
    rng = np.random.default_rng(0)
    for split in {"train"} | {e.split for e in entries} if layout == "train_valid" else {""}:
        for side in _side_dirs(root, layout, split, lower):
            side.mkdir(parents=True, exist_ok=True)
    files = {}
    for entry in entries:
        images_dir, masks_dir = _side_dirs(root, layout, entry.split, lower)
        width, height = entry.size
        image_pixels = rng.integers(0, 255, (height, width, 3), np.uint8)
        image = mask = None
        if entry.image_ext:
            image = images_dir / entry.folder / f"{entry.stem}.{entry.image_ext}"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(_content(entry.image_kind, entry.image_ext, image_pixels))
        if entry.mask_ext:
            suffix = layout_lib.MASK_SUFFIX if entry.mask_suffix else ""
            mask = masks_dir / entry.folder / f"{entry.stem}{suffix}.{entry.mask_ext}"
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.write_bytes(_content(entry.mask_kind, entry.mask_ext, _mask_pixels(entry, rng)))
        files[entry] = (image, mask)
    return files


# ---------------------------------------------------------------- the oracle


def _reads(decoder, path: Path | None) -> bool:
    if path is None or path.suffix.lower() not in layout_lib.IMAGE_EXTENSIONS:
        return False
    try:
        decoder(tf.constant(str(path)))
    except tf.errors.OpError:
        return False
    return True


def _expected(layout: str, files: dict) -> pd.DataFrame:
    """The usable pairs: both files present, read by the trainer, of matching proportions."""
    rows = []
    for entry, (image, mask) in files.items():
        usable = (
            _reads(decode.decode_image, image)
            and _reads(decode.decode_mask, mask)
            and entry.mask_kind != "squashed"
        )
        if usable:
            top = entry.folder.split("/")[0]
            group = top or ("0" if layout == "images_masks" else "all")
            rows.append((str(image), str(mask), group, entry.split))
    return pd.DataFrame(rows, columns=["images", "masks", "group", "split"])


def _splits_non_empty(expected: pd.DataFrame) -> bool:
    train, valid = manifest.split_train_valid(expected)
    return not train.empty and not valid.empty


# ---------------------------------------------------------------- checks


def _assert_real_pair(root: Path, image: str, mask: str) -> None:
    image_path, mask_path = Path(image), Path(mask)
    assert image_path.is_file() and mask_path.is_file()
    image_rel, mask_rel = image_path.relative_to(root).parts, mask_path.relative_to(root).parts
    side = 0 if image_rel[0].lower() in ("images", "masks") else 1  # Images/... or train/images/...
    assert image_rel[:side] == mask_rel[:side]
    assert (image_rel[side].lower(), mask_rel[side].lower()) == ("images", "masks")
    assert image_rel[side + 1 : -1] == mask_rel[side + 1 : -1]  # same group folder
    assert mask_path.stem in (image_path.stem, image_path.stem + layout_lib.MASK_SUFFIX)
    assert decode.decode_image(tf.constant(image)).shape[-1] == 3
    assert decode.decode_mask(tf.constant(mask)).shape[-1] == 1


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str, str]]:
    return set(zip(frame["images"], frame["masks"], frame["group"]))


def _assert_nothing_silently_dropped(root: Path, kept: pd.DataFrame, problems_csv: Path) -> None:
    """Every image or mask file is kept, or named in the report, or the partner of one that is."""
    report = pd.read_csv(problems_csv, dtype=str, keep_default_na=False, encoding="utf-8")
    reported = set(report["path"])
    accounted = set(kept["images"]) | set(kept["masks"]) | reported
    try:
        scanned = layout_lib.scan(root).pairs
    except UserError:
        scanned = kept.iloc[:0]
    for image, mask in zip(scanned["images"], scanned["masks"]):
        if image in reported or mask in reported:
            accounted |= {image, mask}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)  # skipped on purpose
        if path.is_file() and not hidden and relative.parts[0] != manifest.CSV_DIR_NAME:
            assert str(path) in accounted, f"{relative} neither kept nor reported"


@_SETTINGS
@given(tree=_trees)
def test_prepare_keeps_exactly_the_usable_pairs(tree):
    layout, entries, lower = tree
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data set é"
        files = _write_tree(root, layout, entries, lower)
        expected = _expected(layout, files)
        try:
            result = manifest.prepare(root)
        except UserError as error:
            assert expected.empty or not _splits_non_empty(expected), str(error)
            event("UserError")
            return
        event(f"kept {min(len(expected), 4)}+ pairs")
        kept = pd.concat([result.train, result.valid], ignore_index=True)
        assert _pairs(kept) == {(i, m, g) for i, m, g, _ in expected.itertuples(index=False)}
        for image, mask in zip(kept["images"], kept["masks"]):
            _assert_real_pair(root, image, mask)
        train, valid = manifest.read_manifests(root)  # the CSV files round-trip the names
        assert _pairs(train) == _pairs(result.train) and _pairs(valid) == _pairs(result.valid)
        _assert_nothing_silently_dropped(root, kept, result.problems_csv)


# Few names, folders and formats, so that files clash often: each draw writes an image
# and/or a mask (its stem optionally with `_mask`), and draws overlap.
_messy_files = st.lists(
    st.tuples(
        st.sampled_from(["", "", "g1", "g1/deep", ".hidden"]),
        st.sampled_from(["a", "a_mask", "B", "é.x", 'f,"g"', "h\r"]),
        st.none() | st.sampled_from(["png", "png", "jpg", "JPG", "bmp", "tif", "txt"]),
        st.booleans(),
        st.none() | st.sampled_from(["png", "png", "jpg", "bmp", "txt"]),
        st.sampled_from(["ok", "ok", "ok", "garbage"]),
    ),
    max_size=10,
)


@_SETTINGS
@given(layout=st.sampled_from(["images_masks", "train_valid"]), files=_messy_files)
def test_prepare_on_messy_trees_keeps_only_real_pairs(layout, files):
    """Clashing stems ('a.png' + 'a.jpg', masks 'a' + 'a_mask', an image 'a_mask'), hidden files."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        top = root if layout == "images_masks" else root / "train"
        images_dir, masks_dir = top / "images", top / "masks"
        # Three good pairs, so that most trees can be split and the rest is what varies.
        base = [("", f"base {i}", "png", False, "png", "ok") for i in range(3)]
        for folder, stem, image_ext, mask_suffix, mask_ext, kind in base + files:
            written = []
            if image_ext:
                written.append((images_dir / folder / f"{stem}.{image_ext}", (4, 4, 3)))
            if mask_ext:
                mask_stem = stem + (layout_lib.MASK_SUFFIX if mask_suffix else "")
                written.append((masks_dir / folder / f"{mask_stem}.{mask_ext}", (4, 4)))
            for path, shape in written:
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 2, shape, np.uint8) * 255
                path.write_bytes(_content(kind, path.suffix[1:], pixels))
        try:
            scanned = layout_lib.scan(root).pairs
            assert len(set(scanned["masks"])) == len(scanned)  # a mask serves one image
            result = manifest.prepare(root)
        except UserError:
            event("UserError")
            return
        kept = pd.concat([result.train, result.valid], ignore_index=True)
        event(f"kept {min(len(kept) - 3, 3)}+ pairs besides the base")
        assert len(set(kept["images"])) == len(kept) and len(set(kept["masks"])) == len(kept)
        for image, mask in zip(kept["images"], kept["masks"]):
            _assert_real_pair(root, image, mask)
            assert ".hidden" not in image and ".hidden" not in mask
        _assert_nothing_silently_dropped(root, kept, result.problems_csv)


def test_hidden_entries_are_never_reported():
    """Hidden folders hold tool copies (.ipynb_checkpoints); they are neither kept nor reported."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("Images/a.png", "Images/b.png", "Masks/a.png", "Masks/b.png"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.eye(4, dtype=np.uint8) * 255).save(root / name)
        (root / "Images/.ipynb_checkpoints").mkdir()
        (root / "Images/.ipynb_checkpoints/c.png").write_bytes(b"junk")
        result = manifest.prepare(root)
        assert result.problems == [] and os.path.getsize(result.problems_csv) > 0
