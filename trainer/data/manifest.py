"""Keeps a data folder's image/mask pairs in CSV manifests.

The pairs come from `trainer.data.layout.scan` (the two accepted folder
layouts). The manifests go where the seed kept them,
`DATA_ROOT/csv_file/{train,valid}.csv`, with paths relative to the data root so
that the folder can move (or be mounted elsewhere in a container). When the
data root is read-only they go to `FALLBACK/csv_file/`. The data root and the
fallback may be TensorFlow filesystem URLs (`gs://...`): see `layout`.

Preparing the manifests also decodes every pair with the trainer's decoders
(`trainer.data.check`), for the model's classes: pairs the trainer cannot use
are left out, and every problem found goes to `csv_file/problems.csv` (path,
severity, message). When that leaves a split empty, the error names the most
common problem, so that a data set of label-index masks checked as binary ones
says to set num_classes rather than only that nothing is left.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import os
import posixpath
import tempfile
import uuid
from pathlib import Path

from trainer import workdir
from trainer.data import check, layout
from trainer.data.layout import Problem
from trainer.errors import UserError

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging

CSV_DIR_NAME = "csv_file"
PROBLEMS_CSV = "problems.csv"
SKIPPED_MESSAGE = "Skipped %d unusable image/mask pairs; the list is in %s"


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """The manifests `prepare` wrote; frames hold absolute paths (folders: see `layout`)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    csv_dir: Path | str
    problems: list[Problem]  # the scan's and the decoding check's, sorted by path
    num_skipped: int  # pairs left out for an error, plus files that could not be paired
    problems_csv: Path | str


# ---------------------------------------------------------------- split


def split_train_valid(
    pairs: pd.DataFrame, *, valid_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits pairs into train and valid, stratified by group.

    Rows that already carry a split ('train' or 'valid', from the train/valid
    layout) keep it, unless none is in valid (valid/ had no usable pair). The
    others are split per group: round(valid_fraction * n) (halves rounded up)
    go to valid, at least 1 when the group has 2 or more, and at least 1 always
    stays in train.

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
    if "split" not in pairs or not (pairs["split"] == "valid").any():
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
    csv_dir = layout.absolute(csv_dir)
    if data_root is None:
        root = csv_dir.parent if isinstance(csv_dir, Path) else posixpath.dirname(csv_dir)
    else:
        root = layout.absolute(data_root)
    _make_dirs(csv_dir)
    for name, frame in (("train.csv", train), ("valid.csv", valid)):
        relative = frame.loc[:, list(layout.COLUMNS)].copy()
        for column in ("images", "masks"):
            relative[column] = [_relative(path, root) for path in relative[column]]
        _replace_csv(relative, layout.join(csv_dir, name))


def _relative(path: str, root) -> str:
    if layout.is_url(root):
        # posixpath.relpath would fold the URL's '//'; paths under the root just lose it.
        prefix = f"{root}/"
        return path[len(prefix) :] if path.startswith(prefix) else path
    return Path(os.path.relpath(path, root)).as_posix()


def _make_dirs(folder) -> None:
    if layout.is_url(folder):
        tf.io.gfile.makedirs(str(folder))
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)


def _replace_csv(frame: pd.DataFrame, path) -> None:
    # Every field quoted: Python 3.11's csv leaves a '\r' in a file name bare, which
    # then reads back as a line break. 'replace': problems.csv may name a file
    # whose name is not UTF-8.
    text = frame.to_csv(index=False, quoting=csv.QUOTE_ALL)
    workdir.write_bytes(str(path), text.encode("utf-8", errors="replace"))


def prepare(
    data_root,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    fallback_dir=None,
    log_problems: bool = False,
    num_classes: int = 1,
    ignore_label: int = 255,
) -> PrepareResult:
    """Scans `data_root`, checks every pair, splits the usable ones and writes the manifests.

    Pairs with an 'error' problem are left out; every problem, the scan's and
    the check's, goes to `problems.csv` next to the manifests.

    Args:
        data_root: the data set folder, local or a TensorFlow filesystem URL.
        valid_fraction: see `split_train_valid`; ignored for rows in valid/.
        seed: seed of the split.
        fallback_dir: where `csv_file/` goes when `data_root` cannot be written
            (a read-only mount); usually the work directory.
        log_problems: log every problem, one line each, before anything can fail.
        num_classes: the model's classes (`model.num_classes`): 1 checks binary
            masks, 2 or more label-index masks (see `check.check_pairs`).
        ignore_label: the mask value no loss counts (`data.ignore_label`);
            multi-class only.

    Returns:
        The splits (absolute paths), the folder written, the problems and how
        many pairs or files were skipped.

    Raises:
        UserError: the scan failed, a split is empty once unusable pairs are
            left out, or no folder could be written.
    """
    root = layout.absolute(data_root)
    found = layout.scan(root)
    pairs, problems, num_skipped = check.drop_unusable(
        found.pairs, found.problems, num_classes=num_classes, ignore_label=ignore_label
    )
    if log_problems:
        check.log_problems(problems)
    train, valid = split_train_valid(pairs, valid_fraction=valid_fraction, seed=seed)
    csv_dir = _writable_csv_dir(root, fallback_dir)
    problems_csv = layout.join(csv_dir, PROBLEMS_CSV)
    _replace_csv(check.problems_frame(problems), problems_csv)
    for split, frame in (("train", train), ("valid", valid)):
        if frame.empty:
            raise UserError(
                f"the {split} split of {root} is empty: {len(pairs)} usable pair(s) "
                f"found, {num_skipped} pair(s) or file(s) skipped (the list is in "
                f"{problems_csv}){_most_common_error(problems)}; add image/mask pairs (a "
                "group needs 2 pairs to give one to valid)"
            )
    write_manifests(train, valid, csv_dir, data_root=root)
    columns = list(layout.COLUMNS)
    return PrepareResult(
        train[columns], valid[columns], csv_dir, problems, num_skipped, problems_csv
    )


def _most_common_error(problems: list[Problem]) -> str:
    """'; the most common error (N file(s), e.g. PATH): MESSAGE', or '' without errors.

    The reason most pairs were left out, which the count alone hides: a wrong
    `num_classes` gives every mask the same message.
    """
    errors = [problem for problem in problems if problem.severity == "error"]
    if not errors:
        return ""
    # Ties go to the first message in path order: problems are sorted by path.
    ((message, count),) = collections.Counter(p.message for p in errors).most_common(1)
    example = next(problem.path for problem in errors if problem.message == message)
    return f"; the most common error ({count} file(s), e.g. {example}): {message}"


def _writable_csv_dir(root, fallback_dir) -> Path | str:
    csv_dir = layout.join(root, CSV_DIR_NAME)
    if _is_writable_dir(csv_dir):
        return csv_dir
    if fallback_dir is None:
        raise UserError(
            f"cannot write the manifests to {csv_dir}; make the data root writable "
            "or give a writable work directory for them"
        )
    fallback = layout.join(layout.absolute(fallback_dir), CSV_DIR_NAME)
    if not _is_writable_dir(fallback):
        raise UserError(f"cannot write the manifests to {csv_dir} nor to {fallback}")
    logging.info("data root %s is read-only; writing the manifests to %s", root, fallback)
    return fallback


def _is_writable_dir(folder) -> bool:
    """Tries to create the folder and a file in it; permissions alone can deceive (root, :ro)."""
    if layout.is_url(folder):
        return _is_writable_url(str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def _is_writable_url(folder: str) -> bool:
    probe = posixpath.join(folder, f".write-probe-{uuid.uuid4().hex}")
    try:
        tf.io.gfile.makedirs(folder)
        with tf.io.gfile.GFile(probe, "wb") as file:
            file.write(b"")
        tf.io.gfile.remove(probe)
    except tf.errors.OpError:
        return False
    return True


def read_manifests(
    data_root,
    *,
    fallback_dir=None,
    valid_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int = 1,
    ignore_label: int = 255,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reads the manifests of `data_root`, preparing them when there are none.

    Looks in `data_root/csv_file/`, then `fallback_dir/csv_file/`; when neither
    holds both files, calls `prepare`, which leaves out the pairs the trainer
    cannot read and logs one warning line with their count and report. Existing
    manifests are read as they are, without decoding their files again.

    Args:
        data_root: the data set folder the manifests' paths are relative to,
            local or a TensorFlow filesystem URL.
        fallback_dir: the second place to look, and to write to when
            `data_root` is read-only.
        valid_fraction: used only when the manifests have to be prepared.
        seed: used only when the manifests have to be prepared.
        num_classes: used only when the manifests have to be prepared: the
            classes the masks are checked for (see `prepare`). Manifests that
            exist are not checked again for them; delete `csv_file/` for that.
        ignore_label: used only when the manifests have to be prepared.

    Returns:
        `(train, valid)` with columns images, masks (absolute paths) and group.

    Raises:
        UserError: the data root is missing, a manifest is malformed or names a
            missing file, or a split is empty (see `prepare`).
    """
    root = layout.absolute(data_root)
    if not layout.is_dir(root):
        raise UserError(f"data root {root} is not a folder; point --data_root at your data set")
    candidates = [layout.join(root, CSV_DIR_NAME)]
    if fallback_dir is not None:
        candidates.append(layout.join(layout.absolute(fallback_dir), CSV_DIR_NAME))
    for csv_dir in candidates:
        if all(layout.is_file(layout.join(csv_dir, name)) for name in ("train.csv", "valid.csv")):
            logging.info("reading the manifests in %s", csv_dir)
            break
    else:
        logging.info("no manifests for %s yet; scanning and checking it", root)
        prepared = prepare(
            root,
            valid_fraction=valid_fraction,
            seed=seed,
            fallback_dir=fallback_dir,
            num_classes=num_classes,
            ignore_label=ignore_label,
        )
        if prepared.num_skipped:
            logging.warning(SKIPPED_MESSAGE, prepared.num_skipped, prepared.problems_csv)
        csv_dir = prepared.csv_dir
    return tuple(_read_csv(layout.join(csv_dir, name), root) for name in ("train.csv", "valid.csv"))


def _read_csv(csv_path, root) -> pd.DataFrame:
    rescan = f"delete {os.path.dirname(str(csv_path))} to rescan the data root"
    try:
        if layout.is_url(csv_path):
            with tf.io.gfile.GFile(csv_path, "rb") as file:
                frame = pd.read_csv(file, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise UserError(f"cannot read {csv_path} ({error}); {rescan}") from None
    missing_columns = {"images", "masks"} - set(frame.columns)
    if missing_columns:
        raise UserError(f"{csv_path} lacks the column(s) {sorted(missing_columns)}; {rescan}")
    if frame.empty:
        raise UserError(f"{csv_path} lists no pairs, so that split is empty; {rescan}")
    if "group" not in frame:
        frame["group"] = "all"
    for column in ("images", "masks"):
        # Absolute paths and URLs stay as they are, for hand-written manifests.
        frame[column] = [
            path if layout.is_url(path) else os.path.join(root, path) for path in frame[column]
        ]
    _check_exist(frame, csv_path, rescan)
    return frame


def _check_exist(frame: pd.DataFrame, csv_path, rescan: str) -> None:
    paths = list(pd.concat([frame["images"], frame["masks"]]))
    # In a bucket each check is a network request: make them in parallel.
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        exist = pool.map(layout.is_file, paths)
        missing = [path for path, found in zip(paths, exist) if not found]
    if missing:
        raise UserError(
            f"{csv_path} lists {len(missing)} file(s) that do not exist, the first "
            f"{missing[0]}; {rescan}"
        )
