"""The classes a run segments: their count, names, loss weights and the ignore label.

`model.num_classes` decides the whole path of a run:
  - 1 (the default): binary. One sigmoid channel; masks are 0/255 or 0/1
    images, binarised at 127; metrics count the foreground at a probability
    threshold.
  - K >= 2: K softmax channels, class 0 the background; masks are label-index
    PNGs holding 0..K-1 (palette PNGs are read as their indices); pixels equal
    to `data.ignore_label` count in neither the loss nor the metrics; the
    predicted class is the argmax.

Configs saved before these fields existed (a work directory's config.json)
read as binary: every accessor here has the old behaviour as its default.
"""

import dataclasses
from collections.abc import Mapping

from trainer import losses, metrics

DEFAULT_IGNORE_LABEL = 255


def _group(config, name: str) -> Mapping:
    return config[name] if name in config else {}


def num_classes(config) -> int:
    """`model.num_classes` of a ConfigDict or a config.json dict (1 when absent)."""
    return int(_group(config, "model").get("num_classes", 1))


def is_binary(config) -> bool:
    """True for one sigmoid channel (`model.num_classes` 1)."""
    return num_classes(config) == 1


def ignore_label(config) -> int | None:
    """The mask value left out of loss and metrics; None for binary runs (255 is foreground)."""
    if is_binary(config):
        return None
    return int(_group(config, "data").get("ignore_label", DEFAULT_IGNORE_LABEL))


def class_names(config) -> tuple[str, ...]:
    """One name per metric channel: `data.class_names`, or `metrics.class_names_for`'s defaults."""
    names = tuple(_group(config, "data").get("class_names", ()) or ())
    return tuple(metrics.class_names_for(num_classes(config), names))


def class_weights(config) -> tuple[float, ...] | None:
    """`train.class_weights` as floats, or None for equal weights (an empty tuple)."""
    weights = tuple(_group(config, "train").get("class_weights", ()) or ())
    return tuple(float(w) for w in weights) or None


def focal_weight(config) -> float:
    """`train.focal_weight`: the focal term's weight against Dice's 1 (the seed's 1 when absent)."""
    return float(_group(config, "train").get("focal_weight", 1.0))


def cross_entropy_weight(config) -> float:
    """`train.cross_entropy_weight`: the cross-entropy term's weight (0, none, when absent)."""
    return float(_group(config, "train").get("cross_entropy_weight", 0.0))


@dataclasses.dataclass(frozen=True)
class Task:
    """What the train and eval steps compute for a run's classes.

    Attributes:
        num_classes: `model.num_classes` (1 = binary).
        names: one name per metric channel (binary: the foreground's).
        ignore_label: the mask value left out (None for binary).
        class_weights: the multi-class loss weights (None = equal).
        focal_weight: the focal term's weight in the loss; Dice has weight 1.
        cross_entropy_weight: the cross-entropy term's weight in the loss.
    """

    num_classes: int = 1
    names: tuple[str, ...] = ("foreground",)
    ignore_label: int | None = None
    class_weights: tuple[float, ...] | None = None
    focal_weight: float = 1.0
    cross_entropy_weight: float = 0.0

    @property
    def is_binary(self) -> bool:
        """True for one sigmoid channel."""
        return self.num_classes == 1

    @property
    def num_channels(self) -> int:
        """Channels of the probabilities and of the confusion counts: 1 when binary, else K."""
        return self.num_classes

    def loss(self, masks, probabilities):
        """Per-example loss `[batch]` (`losses.segmentation_loss`)."""
        return losses.segmentation_loss(
            masks,
            probabilities,
            num_classes=self.num_classes,
            class_weights=self.class_weights,
            ignore_label=self.ignore_label,
            focal_weight=self.focal_weight,
            cross_entropy_weight=self.cross_entropy_weight,
        )

    def confusion(self, masks, probabilities, threshold: float = 0.5, counted=None):
        """Per-example, per-class `(tp, fp, fn)`, each int32 `[batch, C]`.

        `counted` (optional, `[batch, h, w, 1]`): pixels where it is 0 count nowhere.
        """
        return metrics.class_confusion(
            masks,
            probabilities,
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            threshold=threshold,
            counted=counted,
        )

    def scores(self, tp, fp, fn) -> dict:
        """`iou` and `fscore` (means over the foreground classes) and `per_class`."""
        return metrics.scores_from_sums(tp, fp, fn, self.names)

    def per_class_record(self, scores: dict) -> dict:
        """Flat `iou/NAME`, `fscore/NAME` entries for metrics.jsonl; none when binary."""
        if self.is_binary:
            return {}
        record = {}
        for name, values in scores["per_class"].items():
            record[f"iou/{name}"] = values["iou"]
            record[f"fscore/{name}"] = values["fscore"]
        return record


# The binary task with default names: what code that predates several classes computes.
BINARY = Task()


def task(config) -> Task:
    """The `Task` of a run's config (a ConfigDict or a work directory's config.json)."""
    return Task(
        num_classes=num_classes(config),
        names=class_names(config),
        ignore_label=ignore_label(config),
        class_weights=class_weights(config),
        focal_weight=focal_weight(config),
        cross_entropy_weight=cross_entropy_weight(config),
    )
