"""Small image and mask files for the data tests (a helper module, not a test module)."""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_image(path: Path, size=(8, 6), *, value=None, mode="RGB") -> Path:
    """Writes a small image; masks get `value` everywhere (or a half-foreground pattern)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        pixels = np.zeros(size[::-1], np.uint8)
        pixels[: size[1] // 2] = 255
        if value is not None:
            pixels[:] = value
    else:
        pixels = np.full((*size[::-1], 3), 120, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_pair(root: Path, image: str, mask: str, **mask_kwargs) -> None:
    write_image(root / image)
    write_image(root / mask, mode="L", **mask_kwargs)


def names(frame: pd.DataFrame, column="images") -> list[str]:
    return [Path(path).name for path in frame[column]]
