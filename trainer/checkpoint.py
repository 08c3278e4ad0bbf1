"""Resumable training state: WORKDIR/checkpoints/ (step, model, optimizer, best IoU).

TensorFlow writes a checkpoint's files first and its `checkpoint` index last,
so a run killed while saving, or stopped by a full disk, restores the previous
checkpoint. On multi-worker runs every worker must take part in saving; only
the chief's copy is kept, the others write to a temporary directory that is
removed afterwards.
"""

import os
import shutil
import tempfile

from trainer import workdir as workdir_lib
from trainer.errors import UserError

import tensorflow as tf
from absl import logging

_RESUME_FIX = "free space and run the same command again to resume"


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
        self._workdir_directory = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR)
        directory = self._workdir_directory
        if not is_chief:
            directory = tempfile.mkdtemp(prefix="worker_checkpoints_")
        self._directory = directory
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            directory,
            max_to_keep=keep,
            step_counter=step,
            checkpoint_interval=every_steps or None,
            checkpoint_name=workdir_lib.CHECKPOINT_PREFIX,
        )
        self._step = step
        self._saved_step = None  # the step of this process's last save
        self._model = model
        self._optimizer = optimizer

    def restore(self) -> int:
        """Restores the latest readable checkpoint; returns the step reached (0 if none).

        Every worker restores from the work directory's checkpoints. A checkpoint
        whose files were damaged after it was written (a full disk, a partial
        copy) is passed over for the one before it, with a warning.

        Raises:
            UserError: when checkpoints exist and none of them can be read.
        """
        saved = tf.train.get_checkpoint_state(self._workdir_directory)
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
                f"no checkpoint in {self._workdir_directory} can be restored; use --overwrite "
                "to start over, or another --workdir"
            )
        return 0

    def save(self, *, force: bool = False) -> str | None:
        """Saves if `every_steps` have passed since the last save (always if force).

        A step saved already is not saved again (the periodic save or the
        preemption handler's, then the loop's last one at the same step): the
        state does not change between them.

        Returns:
            The new checkpoint's path prefix, or None when none was due.

        Raises:
            UserError: the disk is full or the folder cannot be written; the
                previous checkpoint stays restorable and the failed one's
                partial files are removed.
        """
        number = int(self._step.numpy())
        if number == self._saved_step:
            return None
        try:
            with workdir_lib.writing(
                self._directory,
                what="a checkpoint",
                needed_bytes=self._state_bytes,
                fix=_RESUME_FIX,
            ):
                try:
                    path = self.manager.save(checkpoint_number=number, check_interval=not force)
                except BaseException:
                    self._remove_partial_save(number)
                    raise
                if path is not None:
                    self._saved_step = number
                return path
        finally:
            if not self._is_chief:
                shutil.rmtree(self._directory, ignore_errors=True)

    def _state_bytes(self) -> int:
        variables = self._optimizer.variables
        if callable(variables):  # a method on Keras' legacy optimizers
            variables = variables()
        return workdir_lib.variables_bytes([*self._model.weights, *variables])

    def _remove_partial_save(self, number: int) -> None:
        """Frees what a failed save wrote; the checkpoint index never listed it."""
        prefix = os.path.join(self._directory, f"{workdir_lib.CHECKPOINT_PREFIX}-{number}")
        if prefix in self.manager.checkpoints:
            return  # an earlier save of this step, complete: keep it
        for path in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*"):
            try:
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
            except (tf.errors.OpError, OSError) as error:
                logging.warning("Cannot remove %s of a failed save (%s)", path, error)
