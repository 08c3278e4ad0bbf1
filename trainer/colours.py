"""Colours of the classes in pictures and overlays: one fixed palette for every tool.

Class 0 (background) is black, the others take matplotlib's "tab10" colours
and then "tab20"'s, so that the same class has the same colour in the sample
grids, predict's overlays and their legends. Ignored pixels are grey.
"""

import numpy as np
from matplotlib import colormaps

IGNORED_RGB = (128, 128, 128)


def palette(num_classes: int) -> np.ndarray:
    """uint8 `[num_classes, 3]`: black for class 0, distinct colours for the rest."""
    tab = [colormaps["tab10"](i)[:3] for i in range(10)]
    tab += [colormaps["tab20"](i)[:3] for i in range(1, 20, 2)]
    colours = [(0.0, 0.0, 0.0)] + [tab[(k - 1) % len(tab)] for k in range(1, num_classes)]
    return (np.asarray(colours) * 255).round().astype(np.uint8)


def label_image(
    labels: np.ndarray, num_classes: int, ignore_label: int | None = None
) -> np.ndarray:
    """Colours a label map `[h, w]` (or `[h, w, 1]`) as uint8 RGB `[h, w, 3]`.

    Values that are no class (the ignore label, or out of range) are grey.
    """
    labels = np.asarray(labels)
    if labels.ndim == 3:
        labels = labels[..., 0]
    colours = np.concatenate([palette(num_classes), [IGNORED_RGB]]).astype(np.uint8)
    index = np.where((labels >= 0) & (labels < num_classes), labels, num_classes)
    return colours[index.astype(np.int64)]
