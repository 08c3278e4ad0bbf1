"""Pictures of validation predictions during training: WORKDIR/samples/step_N.png.

A few validation images are decoded once at the start (`take_samples`); at each
evaluation `write_samples` predicts them and draws a grid, one column per image:
the photo, the true mask, and the predicted probabilities captioned with
the image's IoU at 0.5; with several classes, the true and predicted label
maps in the classes' colours (`trainer.colours`), captioned with the mean IoU
of the image's foreground classes, and a legend. The grid goes to a PNG, to
TensorBoard (`tf.summary.image`) and to wandb when they are given, and is
returned as an image tensor.
"""

import dataclasses
import os

from trainer import classes, colours
from trainer import workdir as workdir_lib
from trainer.data import decode, records

import numpy as np
import pandas as pd
import tensorflow as tf

_CELL_INCHES = 1.6
_DPI = 100


@dataclasses.dataclass(frozen=True)
class Samples:
    """A fixed batch of validation examples at the model's size.

    Attributes:
        images: uint8 `[n, s, s, 3]`.
        masks: uint8 `[n, s, s, 1]`: in {0, 1}, or label indices.
        names: the image file names, for captions.
    """

    images: np.ndarray
    masks: np.ndarray
    names: list[str]


def take_samples(
    rows: pd.DataFrame | records.Split,
    image_size: int,
    num_samples: int = 8,
    resize: str = "stretch",
    num_classes: int = 1,
    crop_side_px: int = 0,
) -> Samples:
    """Decodes `num_samples` pairs spread evenly over `rows`, as validation decodes them.

    Under `resize="crop"` each sample is the centre square of the model's size
    cut from the photo scaled to `crop_side_px`.

    Rows are sorted by path and groups are folders, so spreading the picks
    shows every group of a large enough set. A records split gives its pairs
    in index order, group after group, spread the same way.
    """
    if isinstance(rows, records.Split):
        encoded = records.sample_pairs(rows, num_samples)
    else:
        count = min(num_samples, len(rows))
        chosen = np.unique(np.linspace(0, len(rows) - 1, num=count).round().astype(int))
        encoded = [
            (
                tf.io.read_file(rows["images"].iloc[i]),
                tf.io.read_file(rows["masks"].iloc[i]),
                rows["images"].iloc[i],
            )
            for i in chosen
        ]
    images, masks = [], []
    for image_bytes, mask_bytes, _ in encoded:
        image, mask = decode.decode_pair(
            image_bytes, mask_bytes, image_size, resize, num_classes, crop_side_px
        )
        if resize == "crop":
            image, mask = (
                tf.image.resize_with_crop_or_pad(x, image_size, image_size) for x in (image, mask)
            )
        images.append(image.numpy())
        masks.append(mask.numpy())
    names = [os.path.basename(path) for _, _, path in encoded]
    return Samples(np.stack(images), np.stack(masks), names)


def draw_grid(
    samples: Samples,
    probabilities: np.ndarray,
    *,
    title: str,
    task: classes.Task = classes.BINARY,
) -> np.ndarray:
    """Draws photos, true masks and predictions in rows; returns RGB uint8.

    Args:
        samples: the examples.
        probabilities: float `[n, s, s, C]`, the model's output for them.
        title: the figure's title.
        task: the run's classes; several classes are drawn as coloured label maps.

    Returns:
        uint8 `[height, width, 3]`.
    """
    # The object-oriented API, not pyplot: no global figure state, safe off the main thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tp, fp, fn = (c.numpy() for c in task.confusion(samples.masks, probabilities))
    count = len(samples.images)
    legend_inches = 0.0 if task.is_binary else 0.4
    figure = Figure(
        figsize=(_CELL_INCHES * count, _CELL_INCHES * 3 + 0.5 + legend_inches), dpi=_DPI
    )
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(3, count, squeeze=False)
    for j in range(count):
        axes[0, j].imshow(samples.images[j])
        axes[0, j].set_title(samples.names[j], fontsize=7)
        if task.is_binary:
            axes[1, j].imshow(samples.masks[j, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[2, j].imshow(probabilities[j, ..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            truth = colours.label_image(samples.masks[j], task.num_classes, task.ignore_label)
            predicted = np.argmax(probabilities[j], axis=-1)
            axes[1, j].imshow(truth)
            axes[2, j].imshow(colours.label_image(predicted, task.num_classes))
        iou = task.scores(tp[j].tolist(), fp[j].tolist(), fn[j].tolist())["iou"]
        axes[2, j].set_xlabel(f"IoU {iou:.2f}", fontsize=8)
        for axis in axes[:, j]:
            axis.set_xticks([])
            axis.set_yticks([])
    for axis, label in zip(axes[:, 0], ("photo", "true mask", "predicted")):
        axis.set_ylabel(label)
    if not task.is_binary:
        rgb = colours.palette(task.num_classes) / 255.0
        handles = [Patch(color=rgb[k], label=name) for k, name in enumerate(task.names)]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    figure.suptitle(title)
    # Below the legend's strip, when there is one.
    figure.tight_layout(rect=(0, legend_inches / figure.get_figheight(), 1, 1))
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_samples(
    model,
    samples: Samples,
    *,
    step: int,
    workdir: str,
    summary_writer: tf.summary.SummaryWriter | None = None,
    wandb_run=None,
    task: classes.Task = classes.BINARY,
) -> tf.Tensor:
    """Predicts the samples and saves their grid as WORKDIR/samples/step_N.png.

    Cheap enough for every evaluation: one forward pass on a few images and a
    small figure. Call it on the chief only.

    Args:
        model: the network (float images `[b, s, s, 3]` in 0..1 -> probabilities),
            called eagerly on the host.
        samples: from `take_samples`, taken once.
        step: the training step, in the file name and the title.
        workdir: the work directory.
        summary_writer: when given, the grid is logged as `valid/samples` to TensorBoard.
        wandb_run: when given, the grid is logged as `valid/samples` to wandb.
        task: the run's classes (see `draw_grid`).

    Returns:
        The grid as a uint8 `[1, height, width, 3]` tensor, for `tf.summary.image`.

    Raises:
        UserError: the disk is full or the folder cannot be written.
    """
    inputs = tf.constant(samples.images, tf.float32) / 255.0
    probabilities = tf.cast(model(inputs, training=False), tf.float32).numpy()
    grid = draw_grid(samples, probabilities, title=f"step {step}", task=task)

    path = os.path.join(workdir, workdir_lib.SAMPLES_DIR, f"step_{step}.png")
    workdir_lib.write_bytes(path, tf.io.encode_png(grid).numpy())

    image = tf.constant(grid[None])
    if summary_writer is not None:
        with summary_writer.as_default(step=step):
            tf.summary.image("valid/samples", image, max_outputs=1)
    if wandb_run is not None:
        import wandb  # imported on demand: slow to import and optional

        wandb_run.log({"valid/samples": wandb.Image(grid, caption=f"step {step}")}, step=step)
    return image
