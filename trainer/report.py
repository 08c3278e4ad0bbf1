"""Where training results go: metrics.jsonl, TensorBoard, wandb, curves.png.

Only the chief writes; other workers get a writer that does nothing.
"""

import io
import json
import os

from trainer import workdir as workdir_lib

import tensorflow as tf
from absl import logging


class MetricsWriter:
    """Appends one JSON record per line to metrics.jsonl, mirrored to TensorBoard and wandb."""

    def __init__(self, workdir: str, *, enabled: bool, wandb_run=None):
        self._enabled = enabled
        self._path = os.path.join(workdir, workdir_lib.METRICS_FILE)
        self._wandb_run = wandb_run
        self._summary_writer = None
        if enabled:
            self._summary_writer = tf.summary.create_file_writer(
                os.path.join(workdir, workdir_lib.TENSORBOARD_DIR)
            )

    @property
    def summary_writer(self):
        """The TensorBoard writer of WORKDIR/tb (None when disabled)."""
        return self._summary_writer

    def drop_after(self, step: int) -> None:
        """Removes records past `step`: a resumed run rewrites them, without duplicates."""
        if not self._enabled or not tf.io.gfile.exists(self._path):
            return
        lines = _lines(self._path)
        kept = [r for r in _parse(lines, self._path) if r["step"] <= step]
        # Also rewritten when a line was torn (a run killed mid-write, a full disk):
        # the next record appended to it would be lost with it.
        if len(kept) != sum(1 for line in lines if line.strip()):
            workdir_lib.write_text(self._path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, split: str, values: dict) -> None:
        """Records `values` (name -> number) of `split` ('train' or 'valid') at `step`.

        Raises:
            UserError: the disk is full or the folder cannot be written.
        """
        if not self._enabled:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _number(v) for k, v in values.items()})
        # Appended, not replaced: a line is small, and a torn last line of a
        # killed run is skipped by read_metrics.
        with workdir_lib.writing(os.path.dirname(self._path) or ".", what="metrics.jsonl"):
            with tf.io.gfile.GFile(self._path, "a") as f:
                f.write(json.dumps(record) + "\n")
        with self._summary_writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.scalar(f"{split}/{name}", _number(value))
        if self._wandb_run is not None:
            self._wandb_run.log({f"{split}/{k}": _number(v) for k, v in values.items()}, step=step)

    def close(self) -> None:
        """Flushes TensorBoard and finishes the wandb run."""
        if self._summary_writer is not None:
            self._summary_writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.finish()


def _number(value):
    return int(value) if isinstance(value, int) else float(value)


def read_metrics(path: str) -> list[dict]:
    """Reads metrics.jsonl records, skipping a torn last line of a killed run."""
    return _parse(_lines(path), path)


def _lines(path: str) -> list[str]:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read().splitlines()


def _parse(lines: list[str], path: str) -> list[dict]:
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logging.warning("Ignoring a partial line in %s", path)
    return records


def start_wandb(config_dict: dict, workdir: str, project: str):
    """Starts a wandb run, offline unless the user has logged in (WANDB_API_KEY or netrc)."""
    import wandb  # imported on demand: it is slow to import and optional

    logged_in = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()
    mode = os.environ.get("WANDB_MODE") or ("online" if logged_in else "offline")
    logging.info("wandb: %s run in %s", mode, workdir)
    return wandb.init(project=project, dir=workdir, config=config_dict, mode=mode, resume="allow")


def _netrc_has_wandb() -> bool:
    path = os.path.expanduser("~/.netrc")
    return os.path.exists(path) and "api.wandb.ai" in open(path).read()


def _plot_valid_classes(axis, records) -> None:
    """Dashed valid IoU curves of each class (`iou/NAME` of runs with several classes)."""
    names = sorted(
        {key[4:] for r in records if r["split"] == "valid" for key in r if key.startswith("iou/")}
    )
    for name in names:
        points = [
            (r["step"], r[f"iou/{name}"])
            for r in records
            if f"iou/{name}" in r and r["split"] == "valid"
        ]
        axis.plot(*zip(*points), "--", label=f"valid {name}", linewidth=1)


def plot_curves(workdir: str) -> str | None:
    """Plots train/valid loss and IoU against the step into WORKDIR/curves.png.

    With several classes the IoU panel adds each class's valid IoU, dashed.

    Returns:
        The PNG's path, or None when there is no metrics.jsonl to plot.

    Raises:
        UserError: the disk is full or the folder cannot be written.
    """
    path = os.path.join(workdir, workdir_lib.METRICS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    # The object-oriented API, not pyplot: no global figure state, safe off the main thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(path)
    figure = Figure(figsize=(11, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for axis, metric in zip(axes, ("loss", "iou")):
        for split, style in (("train", "-"), ("valid", "o-")):
            points = [
                (r["step"], r[metric]) for r in records if r["split"] == split and metric in r
            ]
            if points:
                axis.plot(*zip(*points), style, label=split, markersize=3)
        if metric == "iou":
            _plot_valid_classes(axis, records)
        axis.set_xlabel("step")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    output = os.path.join(workdir, workdir_lib.CURVES_FILE)
    workdir_lib.write_bytes(output, png.getvalue())
    return output
