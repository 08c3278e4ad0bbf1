"""Finds the image/mask pairs of a data folder.

Two layouts are accepted (folder names match case-insensitively):

  Images/<group>/*  +  Masks/<group>/*           the seed's; files directly in
                                                 Images/ belong to group '0'
  train/images/* + train/masks/*  (+ valid/...)  group 'all', or the sub-folder
                                                 name when images are nested

An image pairs with the mask of the same file stem in the matching folder; the
mask may have another extension and a `_mask` suffix.

The data root may be a local folder or any TensorFlow filesystem URL (`gs://`,
`ram://`, ...): local folders are listed with pathlib, URLs with `tf.io.gfile`.
Local paths are `Path` objects, URLs strings; `absolute`, `join`, `is_dir` and
`is_file` take either.
"""

import dataclasses
import posixpath
from pathlib import Path, PurePosixPath

from trainer.errors import UserError

import pandas as pd
import tensorflow as tf

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MASK_SUFFIX = "_mask"
COLUMNS = ("images", "masks", "group")  # of a manifest; a scan adds "split"
SEVERITIES = ("error", "warning", "note")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong (or worth knowing) about one file.

    Attributes:
        path: the file concerned (absolute).
        message: what is wrong, in a few words.
        severity: one of `SEVERITIES`.
    """

    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """What `scan` found: `pairs` has columns images, masks, group, split (absolute paths)."""

    pairs: pd.DataFrame
    problems: list[Problem]
    layout: str  # 'images_masks' or 'train_valid'


# ---------------------------------------------------------------- paths


def is_url(path) -> bool:
    """True for a TensorFlow filesystem URL (`gs://...`, `ram://...`), False for a local path."""
    return "://" in str(path)


def absolute(path) -> Path | str:
    """A local path as an absolute `Path`; a URL as a string without a trailing slash."""
    if is_url(path):
        return str(path).rstrip("/")
    return Path(path).absolute()


def join(folder, *names: str) -> Path | str:
    """`folder / name / ...`, a `Path` for a local folder and a string for a URL."""
    if is_url(folder):
        return posixpath.join(str(folder), *names)
    return Path(folder).joinpath(*names)


def is_dir(path) -> bool:
    """Whether `path` (local or URL) is a folder."""
    if is_url(path):
        return tf.io.gfile.isdir(str(path))
    return Path(path).is_dir()


def is_file(path) -> bool:
    """Whether `path` (local or URL) is a file."""
    if is_url(path):
        path = str(path)
        return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
    return Path(path).is_file()


def _list_names(folder) -> list[str]:
    """The names of the entries of `folder`, sorted."""
    if is_url(folder):
        return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(str(folder)))
    return sorted(entry.name for entry in Path(folder).iterdir())


def _files_under(folder) -> list[str]:
    """Every file under `folder`, as paths relative to it with '/', sorted by their parts."""
    if not is_url(folder):
        return [
            path.relative_to(folder).as_posix()
            for path in sorted(Path(folder).rglob("*"))
            if path.is_file()
        ]
    relative = []
    for directory, _, files in tf.io.gfile.walk(str(folder)):
        below = directory[len(str(folder)) :].strip("/")
        relative += [posixpath.join(below, name.rstrip("/")) for name in files]
    return sorted(relative, key=lambda path: path.split("/"))


# ---------------------------------------------------------------- scan


def scan(data_root) -> ScanResult:
    """Pairs every image under `data_root` with its mask.

    Args:
        data_root: a folder in one of the two layouts of the module docstring,
            local or a TensorFlow filesystem URL.

    Returns:
        The pairs, sorted by image path, and the files that could not be paired.

    Raises:
        UserError: the folder is missing or unreadable, in neither layout, or
            holds no pair.
    """
    root = absolute(data_root)
    try:
        layout, frame, problems = _pair_layout(root)
    except PermissionError as error:  # a container user other than the data's owner
        raise UserError(
            f"cannot read {error.filename} (permission denied); make the data set readable"
        ) from None
    except tf.errors.PermissionDeniedError as error:  # a bucket this account cannot list
        raise UserError(
            f"cannot read {root} ({error.message}); give this account read access to it"
        ) from None
    if frame.empty:
        unpaired = sorted((p for p in problems if p.severity == "error"), key=lambda p: p.path)
        first = f", the first {unpaired[0].path}: {unpaired[0].message}" if unpaired else ""
        raise UserError(
            f"no image in {root} has a mask ({len(unpaired)} unpaired files{first}); a mask "
            "must sit in the folder matching its image's and share its file stem"
        )
    frame = frame.sort_values("images", ignore_index=True)
    return ScanResult(frame, sorted(problems, key=lambda p: p.path), layout)


def _pair_layout(root) -> tuple[str, pd.DataFrame, list[Problem]]:
    if not is_dir(root):
        raise UserError(f"data root {root} is not a folder; point --data_root at your data set")
    images_dir, masks_dir = _child(root, "Images"), _child(root, "Masks")
    train_dir = _child(root, "train")
    if images_dir and masks_dir:
        frame, problems = _pair_folders(images_dir, masks_dir, default_group="0")
        frame["split"] = ""
        return "images_masks", frame, problems
    if train_dir and _child(train_dir, "images") and _child(train_dir, "masks"):
        return "train_valid", *_scan_train_valid(root)
    raise UserError(
        f"{root} holds neither Images/ + Masks/ nor train/images/ + train/masks/ "
        "(+ valid/images/ + valid/masks/); arrange the data set in one of these layouts"
    )


def _child(folder, name: str) -> Path | str | None:
    """The sub-folder called `name`, matched case-insensitively (exact match first)."""
    if is_dir(join(folder, name)):
        return join(folder, name)
    for entry in _list_names(folder):
        if entry.lower() == name.lower() and is_dir(join(folder, entry)):
            return join(folder, entry)
    return None


def _scan_train_valid(root) -> tuple[pd.DataFrame, list[Problem]]:
    frames, problems = [], []
    for split in ("train", "valid"):
        split_dir = _child(root, split)
        images_dir = split_dir and _child(split_dir, "images")
        masks_dir = split_dir and _child(split_dir, "masks")
        if not (images_dir and masks_dir):
            continue  # no valid/: split_train_valid carves one out of train/
        frame, split_problems = _pair_folders(images_dir, masks_dir, default_group="all")
        frame["split"] = split
        frames.append(frame)
        problems += split_problems
    return pd.concat(frames, ignore_index=True), problems


def _pair_folders(
    images_dir, masks_dir, *, default_group: str
) -> tuple[pd.DataFrame, list[Problem]]:
    """Pairs images and masks sitting at the same relative folder by file stem."""
    images, problems = _index_files(images_dir)
    masks, mask_problems = _index_files(masks_dir)
    problems += mask_problems
    matches = _match_stems(images, masks)
    rows = []
    for key, image in images.items():
        if key not in matches:
            folder, stem = key
            expected = join(masks_dir, folder, f"{stem}.* or {stem}{MASK_SUFFIX}.*")
            problems.append(Problem(image, f"no mask {expected}"))
            continue
        group = key[0].split("/")[0] if key[0] else default_group
        rows.append((image, masks[matches[key]], group))
    used = set(matches.values())
    for (folder, stem), mask in masks.items():
        image_key = (folder, stem.removesuffix(MASK_SUFFIX))
        if (folder, stem) not in used:
            message = f"no image {join(images_dir, folder, image_key[1])}.*"
            if image_key in matches:  # masks 'x' and 'x_mask' for one image 'x'
                image_name, mask_name = _name(images[image_key]), _name(masks[matches[image_key]])
                message = f"{image_name} pairs with {mask_name}"
            problems.append(Problem(mask, f"{message}; ignored"))
    return pd.DataFrame(rows, columns=list(COLUMNS)), problems


def _match_stems(images: dict, masks: dict) -> dict[tuple[str, str], tuple[str, str]]:
    """Maps image keys to mask keys, each mask used at most once.

    Exact stems are matched first, so that an image named 'x_mask' keeps the
    mask 'x_mask' and the image 'x' does not take it too.
    """
    matches = {}
    for suffix in ("", MASK_SUFFIX):
        free = set(masks) - set(matches.values())
        for folder, stem in images:
            wanted = (folder, stem + suffix)
            if (folder, stem) not in matches and wanted in free:
                matches[folder, stem] = wanted
                free.discard(wanted)
    return matches


def _index_files(folder) -> tuple[dict[tuple[str, str], str], list[Problem]]:
    """Maps (folder relative to `folder`, file stem) to the path of each image under `folder`."""
    index, problems = {}, []
    for relative in _files_under(folder):
        relative = PurePosixPath(relative)
        # Hidden entries include macOS '._name.png' forks and .ipynb_checkpoints copies.
        if any(part.startswith(".") for part in relative.parts):
            continue
        path = str(join(folder, *relative.parts))
        if relative.suffix.lower() not in IMAGE_EXTENSIONS:
            # Noted: a mask saved as .gif would otherwise leave only "no mask" to read.
            extensions = " ".join(sorted(IMAGE_EXTENSIONS))
            problems.append(Problem(path, f"not one of {extensions}; ignored", "note"))
            continue
        parent = relative.parent.as_posix()
        key = ("" if parent == "." else parent, relative.stem)
        if key in index:
            problems.append(Problem(path, f"same stem as {_name(index[key])}; ignored"))
            continue
        index[key] = path
    return index, problems


def _name(path: str) -> str:
    return posixpath.basename(path)
