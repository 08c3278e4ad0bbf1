"""The work directory: its path names, its compatibility check, and how files get written.

  config.json     the resolved config and the run plan
  metrics.jsonl   one JSON record per line
  checkpoints/    resumable state (trainer.checkpoint)
  best/           weights of the best validation IoU and best.json (trainer.best)
  export/         SavedModel of the best weights (trainer.serving)
  tb/             TensorBoard summaries
  samples/        step_N.png, validation predictions (trainer.pictures)
  curves.png      loss and IoU against the step (trainer.report)
  cache/          decoded, resized pairs (trainer.data.cache)
  csv_file/       manifests, when the data root is read-only (trainer.data.manifest)
  eval/           summary.json and per_image.csv (trainer.evaluate)
  model.tflite    TensorFlow Lite export (trainer.export)
  wandb/          wandb's offline files

Every file goes through `tf.io.gfile`, so any path may be a bucket (`gs://`) or
TensorFlow's in-memory `ram://`. A file is written whole or not at all: to a
temporary name beside it, then renamed over the target, so that a reader or a
run killed mid-write never sees half a file. Object stores (`gs://`, `s3://`,
`az://`) get the file directly: an object appears whole when its upload ends,
and a rename there is a copy.

A write that fails for the machine's sake (a full disk, a read-only or
forbidden folder) raises `UserError` with one line naming the folder (see
`writing`), instead of a traceback from deep inside TensorFlow.
"""

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator

from trainer import config_fields
from trainer.errors import UserError

import tensorflow as tf
from absl import logging

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "ckpt"  # files checkpoints/ckpt-STEP.*
BEST_DIR = "best"
BEST_RECORD_FILE = "best.json"  # inside best/
EXPORT_DIR = "export"
TENSORBOARD_DIR = "tb"
SAMPLES_DIR = "samples"
CURVES_FILE = "curves.png"
CACHE_DIR = "cache"
CSV_DIR = "csv_file"
EVAL_DIR = "eval"
EVAL_SUMMARY_FILE = "summary.json"  # inside eval/
EVAL_PER_IMAGE_FILE = "per_image.csv"  # inside eval/
TFLITE_FILE = "model.tflite"  # model_float16.tflite, model_int8.tflite when quantized
WANDB_DIR = "wandb"  # made by wandb.init(dir=WORKDIR)

# Config fields that shape the checkpointed variables: a run with other values
# cannot restore the checkpoints of the work directory.
STATE_FIELDS = (
    ("model", "arch"),
    ("model", "backbone"),
    ("model", "decoder_filters"),
    ("train", "optimizer"),
    ("train", "precision"),
)
# Written by a run and removed by --overwrite; evaluate/export outputs (eval/,
# *.tflite) and the data cache are left alone.
RUN_FILES = (
    CHECKPOINTS_DIR,
    BEST_DIR,
    EXPORT_DIR,
    TENSORBOARD_DIR,
    SAMPLES_DIR,
    METRICS_FILE,
    CONFIG_FILE,
    CURVES_FILE,
)

# Where a file is complete once its upload ends, so that it is written in place.
_OBJECT_STORES = ("gs://", "s3://", "az://")
_FREE_SPACE_MARGIN = 1.05
_DEFAULT_FIX = {
    "full": "free space and run the same command again",
    "read-only": "give a folder on a writable disk",
    "denied": "make it writable, or give another folder",
}
_CAUSES = {
    "full": "the disk is full",
    "read-only": "the file system is read-only",
    "denied": "permission denied",
}


# ---------------------------------------------------------------- compatibility


def check_workdir(workdir: str, config, *, overwrite: bool) -> None:
    """Refuses a work directory holding a run whose state the config cannot restore.

    With `overwrite`, the previous run's files (RUN_FILES) are removed instead.

    Args:
        workdir: the work directory.
        config: the run's config (`config[group][field]` for STATE_FIELDS).
        overwrite: remove a previous run instead of checking it.

    Raises:
        UserError: when the stored config differs in a field of STATE_FIELDS.
    """
    stored_path = os.path.join(workdir, CONFIG_FILE)
    if not tf.io.gfile.exists(stored_path):
        return
    if overwrite:
        for name in RUN_FILES:
            path = os.path.join(workdir, name)
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            elif tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        logging.info("--overwrite: removed the previous run in %s", workdir)
        return
    stored = read_json(stored_path)
    for group, field in STATE_FIELDS:
        old, new = stored.get(group, {}).get(field), config[group][field]
        if isinstance(new, tuple):
            old = tuple(old) if old is not None else None
        if old != new:
            raise UserError(
                f"--workdir={workdir} holds a run with {group}.{field}={old!r}, which cannot "
                f"resume as {new!r}; use another --workdir, or --overwrite to start over"
            )
    changed = changed_fields(stored, config)
    if changed:
        # A resumed run takes the new values (a batch size for more replicas, a
        # learning rate, more steps): said once, so that it is never silent.
        logging.warning(
            "Resuming the run in %s with a changed config: %s", workdir, "; ".join(changed)
        )


def changed_fields(stored: dict, config) -> list[str]:
    """`FIELD: OLD -> NEW` for each field of `config` whose value differs in `stored`.

    `stored` is a config.json; fields it lacks (added since) are not listed.
    """
    stored_values = dict(config_fields.leaves(stored))
    changed = []
    for path, value in config_fields.leaves(config):
        if path not in stored_values:
            continue
        as_stored = json.loads(json.dumps(value))  # tuples are lists in config.json
        if as_stored != stored_values[path]:
            changed.append(f"{path}: {stored_values[path]!r} -> {as_stored!r}")
    return changed


# ---------------------------------------------------------------- failures


@contextlib.contextmanager
def writing(
    folder: str,
    *,
    what: str,
    needed_bytes: int | Callable[[], int] | None = None,
    fix: str | None = None,
) -> Iterator[None]:
    """Turns a write that fails for the machine's sake into a one-line UserError.

    A full disk (ENOSPC, EDQUOT, `ResourceExhaustedError`, "No space left") or
    a folder that cannot be written (EACCES, EPERM, EROFS,
    `PermissionDeniedError`) inside the block raise, e.g.:

        cannot write runs/a/checkpoints: the disk is full (needed about 45 MiB
        for a checkpoint); free space and run the same command again

    Other errors pass unchanged. Usable as a decorator too.

    Args:
        folder: the folder being written, named in the message.
        what: what was being written, e.g. "a checkpoint".
        needed_bytes: the size of the write, or a function giving it (called
            only on failure); None when unknown.
        fix: what the user should do, when not the default advice.

    Raises:
        UserError: on a full disk or an unwritable folder.
    """
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        cause = failure_cause(error)
        if cause is None:
            raise
        if callable(needed_bytes):
            needed_bytes = needed_bytes()
        if needed_bytes is not None:
            detail = f"needed about {format_bytes(needed_bytes)} for {what}"
        else:
            detail = f"while writing {what}"
        raise UserError(
            f"cannot write {folder}: {_CAUSES[cause]} ({detail}); {fix or _DEFAULT_FIX[cause]}"
        ) from error


def failure_cause(error: BaseException) -> str | None:
    """'full', 'read-only' or 'denied' when `error` is the machine's; None otherwise."""
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        if error.errno == errno.EROFS:
            return "read-only"
        if error.errno in (errno.EACCES, errno.EPERM):
            return "denied"
        return None
    message = getattr(error, "message", None) or str(error)
    # ResourceExhaustedError is also an accelerator's "OOM when allocating".
    is_exhausted = isinstance(error, tf.errors.ResourceExhaustedError) and "OOM" not in message
    if is_exhausted or "No space left" in message:
        return "full"
    if "Read-only file system" in message:
        return "read-only"
    if isinstance(error, tf.errors.PermissionDeniedError) or "Permission denied" in message:
        return "denied"
    return None


def check_free_space(folder: str, needed_bytes: int, *, what: str, fix: str | None = None) -> None:
    """Fails before a long write that a local disk has no room for.

    Buckets have no free-space figure and are not checked.

    Args:
        folder: where the files go (it or a parent must exist).
        needed_bytes: bytes about to be written.
        what: what is written, e.g. "the data cache".
        fix: what the user should do, when not the default advice.

    Raises:
        UserError: the disk holding `folder` has less than `needed_bytes` free (+5%).
    """
    if "://" in folder:
        return
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free_bytes = shutil.disk_usage(existing).free
    if free_bytes < needed_bytes * _FREE_SPACE_MARGIN:
        raise UserError(
            f"cannot write {folder}: {what} needs about {format_bytes(needed_bytes)} and the "
            f"disk has {format_bytes(free_bytes)} free; {fix or _DEFAULT_FIX['full']}"
        )


def format_bytes(num_bytes: int) -> str:
    """A size for people: '512 bytes', '3.20 KiB', '45 MiB', '1.50 GiB'."""
    if num_bytes < 1024:
        return f"{num_bytes} bytes"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            value = num_bytes / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def variables_bytes(variables) -> int:
    """Bytes that saving `variables` writes, about: for the messages of `writing`."""
    return int(sum(v.shape.num_elements() * v.dtype.size for v in variables))


# ---------------------------------------------------------------- atomic writes


def temporary_path(path: str) -> str:
    """A name beside `path` for writing it, unique across hosts, containers and calls.

    `.NAME.tmp-HOST-RANDOM`: hidden, and ending otherwise than NAME, so that
    neither a listing of names nor a glob such as `*.pair` takes it for the file.
    """
    directory, name = os.path.split(path)
    # pid is 1 in every container; the host name and a random part tell writers apart.
    unique = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
    return os.path.join(directory, f".{name}.tmp-{unique}")


def write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` whole or not at all (module docstring).

    The parent folder is created when missing. On failure the temporary file
    is removed and the previous `path`, if any, is left as it was.

    Raises:
        UserError: the disk is full or the folder cannot be written (see `writing`).
    """
    folder = os.path.dirname(path) or "."
    with writing(folder, what=os.path.basename(path), needed_bytes=len(payload)):
        if path.startswith(_OBJECT_STORES):
            _write_file(path, payload)
            return
        temporary = temporary_path(path)
        try:
            _write_file(temporary, payload)
            tf.io.gfile.rename(temporary, path, overwrite=True)
        except BaseException:
            _remove_quietly(temporary)
            raise


def write_text(path: str, text: str) -> None:
    """Writes `text` as UTF-8 to `path`, whole or not at all (see `write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, payload: dict) -> None:
    """Writes `payload` as indented JSON with sorted keys, whole or not at all."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str):
    """Reads a JSON file through `tf.io.gfile`."""
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """A local file path for writers that need one (savefig, cv2.imwrite), moved to `path`.

        with workdir.atomic_output("gs://b/run/curves.png") as local_path:
            figure.savefig(local_path)

    The file appears at `path` when the block ends without error; on error it
    is removed and `path` is left as it was. A local `path` gets a temporary
    name beside it and a rename; any other is written locally first, then
    copied with `write_bytes`. The temporary name keeps the extension.

    Raises:
        UserError: the disk is full or the folder cannot be written (see `writing`).
    """
    if "://" not in path:
        folder = os.path.dirname(path) or "."
        temporary = temporary_path(path) + os.path.splitext(path)[1]
        with writing(folder, what=os.path.basename(path)):
            tf.io.gfile.makedirs(folder)
            try:
                yield temporary
                tf.io.gfile.rename(temporary, path, overwrite=True)
            except BaseException:
                _remove_quietly(temporary)
                raise
        return
    handle, temporary = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        with writing(tempfile.gettempdir(), what=os.path.basename(path)):
            yield temporary
        with open(temporary, "rb") as f:
            write_bytes(path, f.read())
    finally:
        os.remove(temporary)


def move_tree(source: str, target: str) -> None:
    """Moves the folder `source` to `target` (which must not exist).

    A local folder is renamed: one atomic step. A URL's folder is copied file
    by file, then the source removed: object stores have no folders to rename
    (a bucket's "rename" is a copy of each object anyway), and TensorFlow's
    `ram://` renames only the folder's own entry, leaving its files behind.
    """
    if "://" not in source:
        tf.io.gfile.rename(source, target)
        return
    for directory, _, files in tf.io.gfile.walk(source):
        destination = target + directory[len(source) :]
        tf.io.gfile.makedirs(destination)
        for name in files:
            try:
                tf.io.gfile.copy(f"{directory}/{name}", f"{destination}/{name}", overwrite=True)
            except tf.errors.NotFoundError:
                # `ram://` lists names by bare prefix: "assets" also shows ".extra" of
                # a sibling "assets.extra", a file that is not there (nor needed).
                continue
    remove_tree(source)


def remove_tree(path: str) -> None:
    """Removes the folder `path` and everything in it (`tf.io.gfile.rmtree`).

    Where rmtree trips over `ram://`'s bare-prefix listing (a name it lists but
    cannot find), the folder is emptied bottom-up instead, passing over those.
    """
    try:
        tf.io.gfile.rmtree(path)
        return
    except tf.errors.NotFoundError:
        if not path.startswith("ram://"):
            raise
    for directory, _, files in tf.io.gfile.walk(path, topdown=False):
        for name in [*files, ""]:
            try:
                tf.io.gfile.remove(f"{directory}/{name}".rstrip("/"))
            except tf.errors.OpError:
                pass  # listed by prefix only, or a folder whose entry is gone


def _write_file(path: str, payload: bytes) -> None:
    if path.startswith("ram://"):
        # TensorFlow's in-memory filesystem (the tests' bucket) writes a file
        # into a missing folder without making it, and then lists and walks the
        # folder as empty; buckets list by prefix, so they need no folder.
        tf.io.gfile.makedirs(os.path.dirname(path))
    try:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(payload)
    except tf.errors.NotFoundError:
        # The folder is made only when the write finds it missing: checking before
        # every write would cost a bucket one more request per file.
        tf.io.gfile.makedirs(os.path.dirname(path) or ".")
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(payload)


def _remove_quietly(path: str) -> None:
    try:
        tf.io.gfile.remove(path)
    except (tf.errors.OpError, OSError):
        pass  # never written, or already gone
