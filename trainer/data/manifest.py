"""Finds image/mask pairs in a data folder and keeps them in CSV manifests.

Two layouts are accepted (folder names match case-insensitively):

  Images/<group>/*  +  Masks/<group>/*           the seed's; files directly in
                                                 Images/ belong to group '0'
  train/images/* + train/masks/*  (+ valid/...)  group 'all', or the sub-folder
                                                 name when images are nested

An image pairs with the mask of the same file stem in the matching folder; the
mask may have another extension and a `_mask` suffix. The manifests go where
the seed kept them, `DATA_ROOT/csv_file/{train,valid}.csv`, with paths relative
to the data root so that the folder can move (or be mounted elsewhere in a
container). When the data root is read-only they go to `FALLBACK/csv_file/`.
"""

import concurrent.futures
import dataclasses
import os
import tempfile
import uuid
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from absl import logging

from trainer.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MASK_SUFFIX = "_mask"
CSV_DIR_NAME = "csv_file"
COLUMNS = ("images", "masks", "group")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong (or worth knowing) about one file.

    Attributes:
        path: the file concerned.
        message: what is wrong, in a few words.
        severity: 'error' (the file cannot be used), 'warning' (usable, likely a
            mistake) or 'note' (legitimate, worth knowing).
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


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """The manifests `prepare` wrote; frames hold absolute paths."""

    train: pd.DataFrame
    valid: pd.DataFrame
    csv_dir: Path
    problems: list[Problem]


# ---------------------------------------------------------------- scan


def scan(data_root) -> ScanResult:
    """Pairs every image under `data_root` with its mask.

    Args:
        data_root: a folder in one of the two layouts of the module docstring.

    Returns:
        The pairs, sorted by image path, and the files that could not be paired.

    Raises:
        UserError: the folder is missing, in neither layout, or holds no pair.
    """
    root = Path(data_root).absolute()
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder; point --data_root at your data set")
    images_dir, masks_dir = _child(root, "Images"), _child(root, "Masks")
    train_dir = _child(root, "train")
    if images_dir and masks_dir:
        layout = "images_masks"
        frame, problems = _pair_folders(images_dir, masks_dir, default_group="0")
        frame["split"] = ""
    elif train_dir and _child(train_dir, "images") and _child(train_dir, "masks"):
        layout = "train_valid"
        frame, problems = _scan_train_valid(root)
    else:
        raise UserError(
            f"{root} holds neither Images/ + Masks/ nor train/images/ + train/masks/ "
            "(+ valid/images/ + valid/masks/); arrange the data set in one of these layouts"
        )
    if frame.empty:
        raise UserError(
            f"no image in {root} has a mask ({len(problems)} unpaired files); a mask must sit "
            "in the folder matching its image's and share its file stem"
        )
    frame = frame.sort_values("images", ignore_index=True)
    return ScanResult(frame, sorted(problems, key=lambda p: p.path), layout)


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder called `name`, matched case-insensitively (exact match first)."""
    if (folder / name).is_dir():
        return folder / name
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name.lower() == name.lower():
            return entry
    return None


def _scan_train_valid(root: Path) -> tuple[pd.DataFrame, list[Problem]]:
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
    pairs = pd.concat(frames, ignore_index=True)
    if set(pairs["split"]) == {"train"}:
        pairs["split"] = ""
    return pairs, problems


def _pair_folders(
    images_dir: Path, masks_dir: Path, *, default_group: str
) -> tuple[pd.DataFrame, list[Problem]]:
    """Pairs images and masks sitting at the same relative folder by file stem."""
    images, problems = _index_files(images_dir)
    masks, mask_problems = _index_files(masks_dir)
    problems += mask_problems
    rows, used = [], set()
    for (folder, stem), image in images.items():
        key = next((k for k in ((folder, stem), (folder, stem + MASK_SUFFIX)) if k in masks), None)
        if key is None:
            expected = masks_dir / folder / f"{stem}.* or {stem}{MASK_SUFFIX}.*"
            problems.append(Problem(str(image), f"no mask {expected}"))
            continue
        used.add(key)
        group = folder.split("/")[0] if folder else default_group
        rows.append((str(image), str(masks[key]), group))
    problems += [
        Problem(str(mask), f"no image {images_dir / key[0] / key[1].removesuffix(MASK_SUFFIX)}.*")
        for key, mask in masks.items()
        if key not in used
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS)), problems


def _index_files(folder: Path) -> tuple[dict[tuple[str, str], Path], list[Problem]]:
    """Maps (folder relative to `folder`, file stem) to each image file under `folder`."""
    index, problems = {}, []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        # Hidden entries include macOS '._name.png' forks and .ipynb_checkpoints copies.
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        parent = relative.parent.as_posix()
        key = ("" if parent == "." else parent, path.stem)
        if key in index:
            problems.append(Problem(str(path), f"same stem as {index[key].name}; ignored"))
            continue
        index[key] = path
    return index, problems


# ---------------------------------------------------------------- split


def split_train_valid(
    pairs: pd.DataFrame, *, valid_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits pairs into train and valid, stratified by group.

    Rows that already carry a split ('train' or 'valid', from the train/valid
    layout) keep it. The others are split per group: round(valid_fraction * n)
    (halves rounded up) go to valid, at least 1 when the group has 2 or more,
    and at least 1 always stays in train.

    Args:
        pairs: frame with columns images, masks, group and optionally split.
        valid_fraction: the share of each group that goes to valid, in (0, 1).
        seed: the same seed and pairs give the same split.

    Returns:
        `(train, valid)`, each sorted by image path with a fresh index.

    Raises:
        UserError: `valid_fraction` outside (0, 1).
    """
    if not 0.0 < valid_fraction < 1.0:
        raise UserError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    pairs = pairs.reset_index(drop=True)
    if "split" not in pairs:
        pairs["split"] = ""
    rng = np.random.default_rng(seed)
    unassigned = pairs[pairs["split"] == ""].sort_values("images")
    for _, members in unassigned.groupby("group", sort=True):
        count = len(members)
        num_valid = int(np.floor(valid_fraction * count + 0.5))
        num_valid = min(max(num_valid, 1 if count >= 2 else 0), count - 1)
        chosen = rng.permutation(count)[:num_valid]
        pairs.loc[members.index, "split"] = "train"
        pairs.loc[members.index[chosen], "split"] = "valid"
    train, valid = (
        pairs[pairs["split"] == split].sort_values("images", ignore_index=True)
        for split in ("train", "valid")
    )
    return train, valid


# ---------------------------------------------------------------- csv files


def write_manifests(train: pd.DataFrame, valid: pd.DataFrame, csv_dir, *, data_root=None) -> None:
    """Writes `train.csv` and `valid.csv` with paths relative to the data root.

    Each file is written to a temporary name and renamed, so a reader (another
    worker preparing the same manifests) never sees half a file.

    Args:
        train: frame with columns images, masks, group (absolute paths).
        valid: the same for the validation split.
        csv_dir: the folder to write; created when missing.
        data_root: the folder paths are made relative to; by default the parent
            of `csv_dir`.
    """
    csv_dir = Path(csv_dir)
    root = Path(data_root).absolute() if data_root is not None else csv_dir.absolute().parent
    csv_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("train.csv", train), ("valid.csv", valid)):
        relative = frame.loc[:, list(COLUMNS)].copy()
        for column in ("images", "masks"):
            relative[column] = [
                Path(os.path.relpath(path, root)).as_posix() for path in relative[column]
            ]
        # A name of our own, not tempfile's: that one would leave the CSV mode 0600.
        partial = csv_dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        relative.to_csv(partial, index=False)
        os.replace(partial, csv_dir / name)


def prepare(
    data_root, *, valid_fraction: float = 0.2, seed: int = 0, fallback_dir=None
) -> PrepareResult:
    """Scans `data_root`, splits it and writes the manifests.

    Args:
        data_root: the data set folder.
        valid_fraction: see `split_train_valid`; ignored for rows in valid/.
        seed: seed of the split.
        fallback_dir: where `csv_file/` goes when `data_root` cannot be written
            (a read-only mount); usually the work directory.

    Returns:
        The splits (absolute paths), the folder written and the scan's problems.

    Raises:
        UserError: the scan failed, a split is empty, or no folder could be written.
    """
    root = Path(data_root).absolute()
    result = scan(root)
    train, valid = split_train_valid(result.pairs, valid_fraction=valid_fraction, seed=seed)
    for split, frame in (("train", train), ("valid", valid)):
        if frame.empty:
            raise UserError(
                f"the {split} split of {root} is empty: {len(result.pairs)} pair(s) found, "
                f"{len(result.problems)} file(s) unpaired; add image/mask pairs "
                "(a group needs 2 pairs to give one to valid)"
            )
    csv_dir = _writable_csv_dir(root, fallback_dir)
    write_manifests(train, valid, csv_dir, data_root=root)
    columns = list(COLUMNS)
    return PrepareResult(train[columns], valid[columns], csv_dir, result.problems)


def _writable_csv_dir(root: Path, fallback_dir) -> Path:
    csv_dir = root / CSV_DIR_NAME
    if _is_writable_dir(csv_dir):
        return csv_dir
    if fallback_dir is None:
        raise UserError(
            f"cannot write the manifests to {csv_dir}; make the data root writable "
            "or give a writable work directory for them"
        )
    fallback = Path(fallback_dir).absolute() / CSV_DIR_NAME
    if not _is_writable_dir(fallback):
        raise UserError(f"cannot write the manifests to {csv_dir} nor to {fallback}")
    logging.info("data root %s is read-only; writing the manifests to %s", root, fallback)
    return fallback


def _is_writable_dir(folder: Path) -> bool:
    """Tries to create the folder and a file in it; permissions alone can deceive (root, :ro)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def read_manifests(
    data_root, *, fallback_dir=None, valid_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reads the manifests of `data_root`, preparing them when there are none.

    Looks in `data_root/csv_file/`, then `fallback_dir/csv_file/`; when neither
    holds both files, calls `prepare`.

    Args:
        data_root: the data set folder the manifests' paths are relative to.
        fallback_dir: the second place to look, and to write to when
            `data_root` is read-only.
        valid_fraction: used only when the manifests have to be prepared.
        seed: used only when the manifests have to be prepared.

    Returns:
        `(train, valid)` with columns images, masks (absolute paths) and group.

    Raises:
        UserError: a manifest is malformed, names a missing file, or a split is empty.
    """
    root = Path(data_root).absolute()
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder; point --data_root at your data set")
    candidates = [root / CSV_DIR_NAME]
    if fallback_dir is not None:
        candidates.append(Path(fallback_dir).absolute() / CSV_DIR_NAME)
    for csv_dir in candidates:
        if (csv_dir / "train.csv").is_file() and (csv_dir / "valid.csv").is_file():
            logging.info("reading the manifests in %s", csv_dir)
            break
    else:
        logging.info("no manifests for %s yet; scanning it", root)
        csv_dir = prepare(
            root, valid_fraction=valid_fraction, seed=seed, fallback_dir=fallback_dir
        ).csv_dir
    return tuple(_read_csv(csv_dir / name, root) for name in ("train.csv", "valid.csv"))


def _read_csv(csv_path: Path, root: Path) -> pd.DataFrame:
    rescan = f"delete {csv_path.parent} to rescan the data root"
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {csv_path} ({error}); {rescan}") from None
    missing_columns = {"images", "masks"} - set(frame.columns)
    if missing_columns:
        raise UserError(f"{csv_path} lacks the column(s) {sorted(missing_columns)}; {rescan}")
    if frame.empty:
        raise UserError(f"{csv_path} lists no pairs, so that split is empty; {rescan}")
    if "group" not in frame:
        frame["group"] = "all"
    for column in ("images", "masks"):
        # os.path.join keeps absolute paths as they are, for hand-written manifests.
        frame[column] = [os.path.join(root, path) for path in frame[column]]
    _check_exist(frame, csv_path, rescan)
    return frame


def _check_exist(frame: pd.DataFrame, csv_path: Path, rescan: str) -> None:
    paths = pd.concat([frame["images"], frame["masks"]])
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise UserError(
            f"{csv_path} lists {len(missing)} file(s) that do not exist, the first "
            f"{missing[0]}; {rescan}"
        )


# ---------------------------------------------------------------- decoding check


def check_pairs(frame: pd.DataFrame, *, max_workers: int | None = None) -> list[Problem]:
    """Decodes every image and mask of `frame` and lists what is wrong with them.

    Masks are read as the trainer reads them: the luminance, binarised at 127,
    except label-index masks holding only 0 and 1, read as 0/1.

    Args:
        frame: rows with images and masks (absolute paths).
        max_workers: decoding threads (cv2 releases the GIL while decoding); by
            default `concurrent.futures`' choice.

    Returns:
        The problems, sorted by path: 'error' for a file that does not decode,
        'warning' for a mask of another size than its image, 'note' for a mask
        that is empty or entirely foreground.
    """
    pairs = list(zip(frame["images"], frame["masks"], strict=True))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
        found = pool.map(lambda pair: _check_pair(*pair), pairs)
        problems = [problem for pair_problems in found for problem in pair_problems]
    return sorted(problems, key=lambda p: (p.path, p.message))


def _check_pair(image_path: str, mask_path: str) -> list[Problem]:
    image, image_problem = _decode(image_path)
    mask, mask_problem = _decode(mask_path)
    problems = [p for p in (image_problem, mask_problem) if p is not None]
    if image is None or mask is None:
        return problems
    if image.shape[:2] != mask.shape[:2]:
        problems.append(
            Problem(
                mask_path,
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}; both are resized to the training size",
                "warning",
            )
        )
    foreground = _foreground(mask)
    if not foreground.any():
        problems.append(Problem(mask_path, "mask is empty (no foreground)", "note"))
    elif foreground.all():
        problems.append(Problem(mask_path, "mask is entirely foreground", "note"))
    return problems


def _decode(path: str) -> tuple[np.ndarray | None, Problem | None]:
    try:
        # imdecode rather than imread: no cv2 warnings on stderr, any path encoding.
        data = np.fromfile(path, np.uint8)
    except OSError as error:
        return None, Problem(path, f"cannot read: {error.strerror}")
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if pixels is None:
        return None, Problem(path, "does not decode as an image")
    return pixels, None


def _foreground(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if mask.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        mask = cv2.cvtColor(mask, code) if mask.shape[2] in (3, 4) else mask[..., 0]
    if mask.max() <= 1:  # a label-index mask
        return mask == 1
    wide = mask.dtype.kind in "iu" and mask.dtype.itemsize > 1
    return mask > (np.iinfo(mask.dtype).max // 2 if wide else 127)
