"""Resumable training state and the best model's weights in the work directory.

  WORKDIR/checkpoints/   tf.train.CheckpointManager: step, model, optimizer, best IoU
  WORKDIR/best/          weights of the best validation IoU, and best.json

TensorFlow writes a checkpoint's files first and its `checkpoint` index last,
so a run killed while saving restores the previous checkpoint. On multi-worker
runs every worker must take part in saving; only the chief's copy is kept,
the others write to a temporary directory that is removed afterwards.
"""

import json
import os
import shutil
import tempfile

from trainer.errors import UserError

import tensorflow as tf
from absl import logging

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"


class TrainingState:
    """The checkpointed state and its manager.

    Attributes:
        checkpoint: the `tf.train.Checkpoint` of step, model, optimizer, best_iou.
        manager: its `tf.train.CheckpointManager`.
        best_iou: float variable, the best validation IoU so far (-1 before any).
    """

    def __init__(self, workdir, *, step, model, optimizer, is_chief, keep, every_steps):
        self.best_iou = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_iou")
        self.checkpoint = tf.train.Checkpoint(
            step=step, model=model, optimizer=optimizer, best_iou=self.best_iou
        )
        self._is_chief = is_chief
        directory = os.path.join(workdir, CHECKPOINT_DIR)
        self._restore_directory = directory
        if not is_chief:
            directory = tempfile.mkdtemp(prefix="worker_checkpoints_")
        self._directory = directory
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            directory,
            max_to_keep=keep,
            step_counter=step,
            checkpoint_interval=every_steps or None,
        )
        self._step = step

    def restore(self) -> int:
        """Restores the latest readable checkpoint; returns the step reached (0 if none).

        A checkpoint whose files were damaged after it was written (a full disk,
        a partial copy) is passed over for the one before it, with a warning.

        Raises:
            UserError: when checkpoints exist and none of them can be read.
        """
        saved = tf.train.get_checkpoint_state(self._restore_directory)
        candidates = list(reversed(saved.all_model_checkpoint_paths)) if saved else []
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            # A damaged file fails in many ways (OpError, IndexError from the reader, ...).
            except Exception as error:  # noqa: BLE001
                logging.warning("Cannot restore %s (%s); trying an older one", path, error)
                continue
            step = int(self._step.numpy())
            logging.info("Resumed from checkpoint at step %d", step)
            return step
        if candidates:
            raise UserError(
                f"no checkpoint in {self._directory} can be restored; use --overwrite to start "
                "over, or another --workdir"
            )
        return 0

    def save(self, *, force: bool = False) -> str | None:
        """Saves if `every_steps` have passed since the last save (always if force)."""
        path = self.manager.save(checkpoint_number=self._step, check_interval=not force)
        if not self._is_chief:
            shutil.rmtree(self._directory, ignore_errors=True)
        return path


def write_json_atomically(path: str, payload: dict) -> None:
    """Writes JSON to a temporary file and renames it, so readers never see half a file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        temporary = f.name
    os.replace(temporary, path)


def save_best_weights(workdir: str, model: tf.keras.Model, *, step: int, results: dict) -> None:
    """Saves the model's weights as the best so far, replacing the previous best."""
    best_dir = os.path.join(workdir, BEST_DIR)
    prefix = os.path.join(best_dir, f"weights-{step}")
    model.save_weights(prefix)
    previous = read_best(workdir)
    write_json_atomically(
        os.path.join(best_dir, "best.json"),
        {"step": step, "weights": os.path.basename(prefix), **_plain(results)},
    )
    if previous and previous["weights"] != os.path.basename(prefix):
        for name in os.listdir(best_dir):
            if name.startswith(previous["weights"] + "."):
                os.remove(os.path.join(best_dir, name))


def read_best(workdir: str) -> dict | None:
    """The best.json record of a work directory, or None."""
    path = os.path.join(workdir, BEST_DIR, "best.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_best_weights(workdir: str, model: tf.keras.Model) -> dict | None:
    """Loads the best weights into `model`; returns their record, or None if there are none."""
    record = read_best(workdir)
    if record is None:
        return None
    model.load_weights(os.path.join(workdir, BEST_DIR, record["weights"])).expect_partial()
    return record


def _plain(results: dict) -> dict:
    return {k: (float(v) if isinstance(v, float) else v) for k, v in results.items()}


# Config fields that shape the checkpointed variables: a run with other values
# cannot restore the checkpoints of the work directory.
STATE_FIELDS = (
    ("model", "arch"),
    ("model", "backbone"),
    ("model", "decoder_filters"),
    ("train", "optimizer"),
    ("train", "precision"),
)
# Written by a run; evaluate/export outputs (eval/, *.tflite) are left alone.
RUN_FILES = (
    "checkpoints",
    BEST_DIR,
    "export",
    "tb",
    "samples",
    "metrics.jsonl",
    "config.json",
    "curves.png",
)


def check_workdir(workdir: str, config, *, overwrite: bool) -> None:
    """Refuses a work directory holding a run whose state the config cannot restore.

    With `overwrite`, the previous run's files are removed instead.

    Raises:
        UserError: when the stored config differs in a field of STATE_FIELDS.
    """
    stored_path = os.path.join(workdir, "config.json")
    if not os.path.exists(stored_path):
        return
    if overwrite:
        for name in RUN_FILES:
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        logging.info("--overwrite: removed the previous run in %s", workdir)
        return
    with open(stored_path) as f:
        stored = json.load(f)
    for group, field in STATE_FIELDS:
        old, new = stored.get(group, {}).get(field), config[group][field]
        if isinstance(new, tuple):
            old = tuple(old) if old is not None else None
        if old != new:
            raise UserError(
                f"--workdir={workdir} holds a run with {group}.{field}={old!r}, which cannot "
                f"resume as {new!r}; use another --workdir, or --overwrite to start over"
            )
