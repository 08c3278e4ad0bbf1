"""What the training loop shows and watches: the progress bar, the train window, divergence.

These keep the loop in trainer/train.py short: `Progress` shows a tqdm bar on
a terminal and plain log lines otherwise; `TrainWindow` accumulates the train
figures between two records of metrics.jsonl; `DivergenceGuard` stops a run
whose steps keep being skipped for a non-finite loss.
"""

import sys

from trainer import classes
from trainer.errors import UserError

import numpy as np
from absl import logging


class DivergenceGuard:
    """Stops the run after too many consecutive steps with a non-finite loss or gradient.

    Such steps are skipped (weights unchanged), so the checkpoints stay good; a
    run that keeps producing them has diverged and burns compute for nothing.
    """

    def __init__(self, max_bad_steps: int):
        self._max_bad_steps = max_bad_steps
        self._bad_in_a_row = 0
        self._first_bad_step = None

    def check(self, step: int, num_steps: int, finite_steps: int, last_checkpoint: str | None):
        """Counts the call's skipped steps; raises UserError once too many came in a row.

        Args:
            step: the step reached after the call.
            num_steps: steps the call ran.
            finite_steps: of those, steps with a finite loss and gradients.
            last_checkpoint: the latest checkpoint, named in the error.
        """
        if finite_steps == num_steps:
            self._bad_in_a_row, self._first_bad_step = 0, None
            return
        # Steps of one call are not told apart: count the call's bad steps as the latest.
        if finite_steps:
            self._bad_in_a_row = 0
        if self._first_bad_step is None or finite_steps:
            self._first_bad_step = step - (num_steps - finite_steps) + 1
        self._bad_in_a_row += num_steps - finite_steps
        logging.warning(
            "Non-finite loss or gradients: %d step(s) skipped up to step %d",
            num_steps - finite_steps,
            step,
        )
        if self._max_bad_steps and self._bad_in_a_row >= self._max_bad_steps:
            raise UserError(
                f"training diverged: {self._bad_in_a_row} steps in a row from step "
                f"{self._first_bad_step} had a non-finite loss or gradients (all skipped); the "
                f"last good checkpoint is {last_checkpoint or 'none'}; lower "
                "--config.train.learning_rate or use float32, then resume"
            )


class TrainWindow:
    """Training figures accumulated since the last train record."""

    def __init__(self, task: classes.Task = classes.BINARY):
        self.loss_sum, self.finite_steps, self.images, self.seconds = 0.0, 0, 0, 0.0
        self.task = task
        self.tp = self.fp = self.fn = np.zeros(task.num_channels, np.int64)

    def add(self, logs: dict, images: int, seconds: float) -> None:
        """Adds one train call: its logs (see `loop.make_train_fn`), images and duration."""
        finite = int(logs["finite_steps"])
        if finite:
            self.loss_sum += float(logs["loss"]) * finite
        self.finite_steps += finite
        self.tp = self.tp + np.asarray(logs["tp"], np.int64)
        self.fp = self.fp + np.asarray(logs["fp"], np.int64)
        self.fn = self.fn + np.asarray(logs["fn"], np.int64)
        self.images += images
        self.seconds += seconds

    @property
    def loss(self) -> float:
        """Mean loss over the window's finite steps (NaN when there were none)."""
        return self.loss_sum / self.finite_steps if self.finite_steps else float("nan")

    @property
    def images_per_sec(self) -> float:
        """Training throughput over the window, all replicas together."""
        return self.images / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        """The window's train record: mean loss, IoU, F1 (per class too) and images/s."""
        scores = self.task.scores(*(c.tolist() for c in (self.tp, self.fp, self.fn)))
        return {
            "loss": self.loss,
            "iou": scores["iou"],
            "fscore": scores["fscore"],
            **self.task.per_class_record(scores),
            "images_per_sec": self.images_per_sec,
        }


class Progress:
    """A tqdm bar on a terminal; plain log lines otherwise."""

    def __init__(self, start_step, total_steps):
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self._last = start_step
        self._total_steps = total_steps

    def update(self, step: int, loss: float, images_per_sec: float) -> None:
        """Moves the bar to `step`, showing the window's loss and throughput."""
        if self._bar is not None:
            self._bar.update(step - self._last)
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_sec:.1f}")
        self._last = step

    def log_train(self, step, summary):
        """A train line in the log when there is no bar to show it."""
        if self._bar is None:
            logging.info(
                "step %d/%d: train loss %.4f IoU %.4f, %.1f images/s",
                step,
                self._total_steps,
                summary["loss"],
                summary["iou"],
                summary["images_per_sec"],
            )

    def note(self, message: str) -> None:
        """A line above the bar (or in the log)."""
        if self._bar is not None:
            self._bar.write(message)
        else:
            logging.info("%s", message)

    def close(self) -> None:
        """Closes the bar (once; later calls do nothing)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
