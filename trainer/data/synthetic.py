"""A synthetic nail data set in the seed's folder layout, learnable in minutes.

Each example is a skin-like textured background with finger-like blobs, nails
at the finger tips (rounded shapes with a highlight band and a darker rim) and
clutter (lines, small circles, sharp-cornered boxes) that shares colours with
the nails but not their shape or shading, so that no single colour threshold
solves the task. The four groups differ in distribution, as the seed's do:

  1: few large nails in good light (40 % of the images)
  2: many small nails (25 %)
  3: dark, low-contrast light and darker skin (20 %)
  4: mostly painted nails, heavy clutter, blur and sensor noise (15 %)

With `num_classes=3` every nail also gets a tip band at its far (free) end,
drawn in its own colour, and the masks hold label indices instead of 0/255:

  0: background (skin, fingers without a nail, clutter)
  1: the nail plate
  2: the tip band, a "French tip" over the far 25-35 % of the nail, its inner
     edge a slight smile: whitish on natural nails, on painted ones the colour
     of `_TIP_COLOURS` farthest from the paint (white, near black or gold)

Labels 1 and 2 together cover exactly the pixels of the binary mask of the same
seed; the tip colours come from a generator spawned from the image's, so the
geometry, the clutter and the camera match the binary set's.

Everything is drawn with vectorised numpy and cv2. Every image gets its own
random generator from `(seed, index)`, so the same flags write the same bytes.
"""

import dataclasses
import os
from pathlib import Path

from trainer.errors import UserError

import cv2
import numpy as np

GROUPS = (1, 2, 3, 4)
# Unequal on purpose: balanced sampling across groups has to matter.
GROUP_FRACTIONS = (0.40, 0.25, 0.20, 0.15)
# The mask variants: 1 writes 0/255 nail masks, 3 label indices (see the docstring).
NUM_CLASSES = (1, 3)
BACKGROUND, NAIL, TIP = 0, 1, 2
# The share of the image that the nails cover, as a fraction of its pixels.
MIN_COVERAGE = 0.05
MAX_COVERAGE = 0.30

# RGB anchors; the skin tone parameter interpolates between the two.
_LIGHT_SKIN = np.array([236.0, 196.0, 172.0])
_DARK_SKIN = np.array([92.0, 58.0, 42.0])
_NATURAL_NAIL = np.array([232.0, 158.0, 168.0])
_PAINTED_NAILS = np.array(
    [
        [196.0, 22.0, 38.0],  # red
        [150.0, 10.0, 60.0],  # wine
        [48.0, 26.0, 44.0],  # near black
        [40.0, 44.0, 96.0],  # navy
        [242.0, 188.0, 214.0],  # pastel pink
        [186.0, 224.0, 204.0],  # mint
        [196.0, 206.0, 244.0],  # baby blue
        [226.0, 206.0, 240.0],  # lilac
    ]
)
# Tip bands of painted nails take the one farthest from the paint, so they stand out.
_TIP_COLOURS = np.array(
    [
        [246.0, 242.0, 234.0],  # white, also every natural nail's tip
        [26.0, 22.0, 28.0],  # near black
        [214.0, 176.0, 64.0],  # gold
    ]
)
_CLUTTER_COLOURS = np.array(
    [
        [30.0, 90.0, 200.0],
        [40.0, 160.0, 60.0],
        [230.0, 200.0, 40.0],
        [245.0, 245.0, 245.0],
        [120.0, 120.0, 120.0],
        [20.0, 20.0, 20.0],
        [240.0, 130.0, 30.0],
        [196.0, 22.0, 38.0],  # nail colours too: shape and shading must decide
        [232.0, 158.0, 168.0],
        [242.0, 188.0, 214.0],
    ]
)


@dataclasses.dataclass(frozen=True)
class _GroupStyle:
    """How one group's images are drawn; lengths are fractions of the image side."""

    num_nails: tuple[int, int]
    nail_length: tuple[float, float]
    skin_tone: tuple[float, float]  # 0 is light skin, 1 dark
    painted_probability: float
    num_clutter: tuple[int, int]
    light_gain: tuple[float, float]
    contrast: tuple[float, float]
    blur_sigma_px: tuple[float, float]  # at 256 px; scaled with the image
    noise_sigma: float  # on 0..255


_STYLES = {
    1: _GroupStyle((1, 3), (0.20, 0.30), (0.0, 0.6), 0.15, (2, 5), (0.95, 1.1), (1.0, 1.0),
                   (0.0, 0.0), 2.0),
    2: _GroupStyle((5, 10), (0.09, 0.14), (0.0, 0.8), 0.25, (3, 8), (0.9, 1.05), (0.9, 1.0),
                   (0.0, 0.0), 2.0),
    3: _GroupStyle((2, 5), (0.13, 0.24), (0.5, 1.0), 0.20, (2, 6), (0.5, 0.7), (0.65, 0.8),
                   (0.0, 0.0), 3.0),
    4: _GroupStyle((2, 6), (0.11, 0.22), (0.0, 1.0), 0.80, (10, 20), (0.8, 1.05), (0.85, 1.0),
                   (0.7, 1.3), 6.0),
}  # fmt: skip


def group_counts(num_images: int) -> dict[int, int]:
    """Splits `num_images` over the groups by `GROUP_FRACTIONS`, summing exactly.

    Args:
        num_images: total number of images.

    Returns:
        `{group: count}`, the largest remainders rounded up.
    """
    shares = np.asarray(GROUP_FRACTIONS) * num_images
    counts = np.floor(shares).astype(int)
    # Stable sort keeps ties in group order, so the result is deterministic.
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: num_images - counts.sum()]] += 1
    return dict(zip(GROUPS, counts.tolist(), strict=True))


def write_dataset(
    output_dir, *, num_images: int, image_size: int, seed: int, num_classes: int = 1
) -> int:
    """Writes `Images/<group>/<name>.png` and `Masks/<group>/<name>.png` under `output_dir`.

    Args:
        output_dir: folder to write into; created when missing.
        num_images: number of image/mask pairs, spread over the groups unequally.
        image_size: side of the square images in pixels.
        seed: the same seed writes the same bytes.
        num_classes: 1 writes 0/255 nail masks; 3 label-index masks with a tip
            class (see the module docstring).

    Returns:
        The number of pairs written.

    Raises:
        UserError: for a bad argument or an output folder that cannot be written.
    """
    if num_images < 1:
        raise UserError(f"num_images must be at least 1, got {num_images}")
    if seed < 0:
        raise UserError(f"seed must be 0 or more, got {seed}")
    if image_size < 32:
        raise UserError(f"image_size must be at least 32 pixels, got {image_size}")
    check_num_classes(num_classes)
    root = Path(output_dir)
    index = 0
    for group, count in group_counts(num_images).items():
        image_dir, mask_dir = _make_group_dirs(root, group)
        for _ in range(count):
            rng = np.random.default_rng([seed, index])
            image, mask = render_example(rng, group, image_size, num_classes=num_classes)
            name = f"nail_{index:05d}.png"
            _write_png(image_dir / name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            _write_png(mask_dir / name, mask)
            index += 1
    return index


def check_num_classes(num_classes: int) -> None:
    """Raises UserError unless `num_classes` is one of `NUM_CLASSES`."""
    if num_classes not in NUM_CLASSES:
        raise UserError(
            f"--num_classes must be 1 (nail masks) or 3 (background, nail, tip), got {num_classes}"
        )


def _make_group_dirs(root: Path, group: int) -> tuple[Path, Path]:
    dirs = (root / "Images" / str(group), root / "Masks" / str(group))
    try:
        for folder in dirs:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create {error.filename}: {error.strerror}; pass a writable --output_dir"
        ) from None
    return dirs


def _write_png(path: Path, pixels: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:  # cv2 only fails here on an unsupported array, a bug of ours
        raise RuntimeError(f"cv2 could not encode {path}")
    try:
        encoded.tofile(os.fspath(path))
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}; check --output_dir") from None


def render_example(
    rng: np.random.Generator, group: int, image_size: int, *, num_classes: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one image and its mask.

    Args:
        rng: the random generator; the same state gives the same example.
        group: 1..4, the distribution to draw from (see the module docstring).
        image_size: side of the square image in pixels.
        num_classes: 1 for a nail mask, 3 for label indices with a tip band.

    Returns:
        `(image, mask)`: uint8 RGB `[size, size, 3]` and uint8 `[size, size]`, in
        {0, 255} for 1 class and in {0, 1, 2} (`BACKGROUND`, `NAIL`, `TIP`) for 3.
    """
    check_num_classes(num_classes)
    # Spawning leaves `rng`'s stream as it is, so the tips change nothing else.
    tip_rng = rng.spawn(1)[0] if num_classes == 3 else None
    style = _STYLES[int(group)]
    size = image_size
    tone = rng.uniform(*style.skin_tone)
    skin = _LIGHT_SKIN + tone * (_DARK_SKIN - _LIGHT_SKIN)
    image = _skin_background(rng, skin, size)
    nails = _place_nails(rng, style, size)
    for nail in nails:
        _draw_finger(rng, image, nail, skin)
    # Fingers without a visible nail too, so that a finger is no cue for a nail.
    for _ in range(rng.integers(1, 4 if style.num_nails[1] > 6 else 3)):
        _draw_finger(rng, image, _random_nail(rng, style, size), skin)
    for _ in range(rng.integers(style.num_clutter[0], style.num_clutter[1] + 1)):
        _draw_clutter(rng, image, size)
    mask = np.zeros((size, size), np.uint8)
    painted = rng.random() < style.painted_probability
    for nail in nails:
        _draw_nail(rng, image, mask, nail, painted=painted, tip_rng=tip_rng)
    image = _apply_camera(rng, image, style, size)
    return image, mask


# ---------------------------------------------------------------- background


def _skin_background(rng: np.random.Generator, skin: np.ndarray, size: int) -> np.ndarray:
    # Mostly brightness blotches, little hue change: skin does not turn green.
    blotches = _low_frequency_noise(rng, size, grid=5, channels=1) * 10.0
    tint = _low_frequency_noise(rng, size, grid=4, channels=3) * 4.0
    grain = cv2.GaussianBlur(rng.normal(size=(size, size)).astype(np.float32), (0, 0), 1.2)
    image = skin.astype(np.float32) + blotches + tint + 6.0 * grain[..., None]
    # A broad shading gradient: skin is never lit evenly.
    return image * (1.0 + 0.12 * _low_frequency_noise(rng, size, grid=3, channels=1))


def _low_frequency_noise(
    rng: np.random.Generator, size: int, *, grid: int, channels: int
) -> np.ndarray:
    coarse = rng.normal(size=(grid, grid, channels)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return smooth.reshape(size, size, channels)


@dataclasses.dataclass(frozen=True)
class _Nail:
    """A nail's geometry in pixels: centre, half-length along its axis, half-width."""

    cx: float
    cy: float
    half_length: float
    half_width: float
    angle: float  # radians; the axis points from the cuticle to the free edge
    exponent: float  # of the superellipse: 2 is an ellipse, larger is squarer


def _random_nail(rng: np.random.Generator, style: _GroupStyle, size: int) -> _Nail:
    length = rng.uniform(*style.nail_length) * size
    return _Nail(
        cx=rng.uniform(0.08, 0.92) * size,
        cy=rng.uniform(0.08, 0.92) * size,
        half_length=length / 2,
        half_width=length * rng.uniform(0.32, 0.42),
        angle=rng.uniform(0, 2 * np.pi),
        exponent=rng.uniform(2.0, 4.0),
    )


def _place_nails(rng: np.random.Generator, style: _GroupStyle, size: int) -> list[_Nail]:
    """Places non-overlapping nails until the count is reached and the coverage is in range."""
    target = rng.integers(style.num_nails[0], style.num_nails[1] + 1)
    occupied = np.zeros((size, size), bool)
    nails = []
    for attempt in range(400):
        nail = _random_nail(rng, style, size)
        if attempt > 200:  # crowded: larger nails reach the coverage in fewer tries
            nail = dataclasses.replace(
                nail, half_length=nail.half_length * 1.4, half_width=nail.half_width * 1.4
            )
        region, inside = _nail_pixels(nail, size)
        if inside.sum() == 0 or (occupied[region] & inside).any():
            continue
        coverage = (occupied.sum() + inside.sum()) / occupied.size
        if coverage > MAX_COVERAGE:
            continue
        occupied[region] |= inside
        nails.append(nail)
        if len(nails) >= target and coverage >= MIN_COVERAGE:
            break
    return nails


def _nail_frame(nail: _Nail, size: int):
    """Returns the nail's bounding box and its pixel coordinates along and across the axis."""
    reach = np.hypot(nail.half_length, nail.half_width) + 2
    x0, x1 = (int(np.clip(v, 0, size)) for v in (nail.cx - reach, nail.cx + reach + 1))
    y0, y1 = (int(np.clip(v, 0, size)) for v in (nail.cy - reach, nail.cy + reach + 1))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - nail.cx, ys + 0.5 - nail.cy
    cos, sin = np.cos(nail.angle), np.sin(nail.angle)
    along = (dx * cos + dy * sin) / nail.half_length
    across = (-dx * sin + dy * cos) / nail.half_width
    radius = (np.abs(along) ** nail.exponent + np.abs(across) ** nail.exponent) ** (
        1 / nail.exponent
    )
    return (slice(y0, y1), slice(x0, x1)), along, across, radius


def _nail_pixels(nail: _Nail, size: int):
    region, _, _, radius = _nail_frame(nail, size)
    return region, radius <= 1.0


# ---------------------------------------------------------------- drawing


def _draw_finger(rng: np.random.Generator, image: np.ndarray, nail: _Nail, skin: np.ndarray):
    """Draws a soft elongated blob ending just past the nail's free edge."""
    size = image.shape[0]
    half_width = nail.half_width * rng.uniform(1.3, 1.6)
    half_length = rng.uniform(2.5, 5.0) * nail.half_length
    # The finger tip lies a little beyond the nail's free edge, along the axis.
    offset = half_length - nail.half_length * rng.uniform(1.1, 1.3)
    cx = nail.cx - offset * np.cos(nail.angle)
    cy = nail.cy - offset * np.sin(nail.angle)
    alpha = np.zeros((size, size), np.float32)
    cv2.ellipse(
        alpha,
        (round(cx * 16), round(cy * 16)),
        (round(half_length * 16), round(half_width * 16)),
        np.degrees(nail.angle),
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
        4,
    )
    blurred = cv2.GaussianBlur(alpha, (0, 0), max(0.7, half_width * 0.12))
    # Rounded look: the blob is darker at its sides than along its middle.
    core = cv2.GaussianBlur(alpha, (0, 0), max(1.0, half_width * 0.5)) ** 2
    shade = rng.uniform(0.8, 1.15) * (0.85 + 0.25 * core)
    colour = skin.astype(np.float32) + rng.normal(0, 5, 3).astype(np.float32)
    image *= 1 - blurred[..., None]
    image += (blurred * shade)[..., None] * colour


def _draw_clutter(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """Draws one flat-coloured line, small circle or sharp-cornered box."""
    colour = tuple(float(c) for c in _CLUTTER_COLOURS[rng.integers(len(_CLUTTER_COLOURS))])
    kind = rng.integers(3)
    centre = rng.uniform(0, size, 2)
    if kind == 0:
        end = centre + rng.normal(0, 0.25 * size, 2)
        thickness = max(1, round(rng.uniform(0.004, 0.015) * size))
        cv2.line(image, _point(centre), _point(end), colour, thickness, cv2.LINE_AA, 4)
    elif kind == 1:
        radius = max(1, round(rng.uniform(0.008, 0.03) * size * 16))
        thickness = -1 if rng.random() < 0.5 else max(1, round(0.008 * size))
        cv2.circle(image, _point(centre), radius, colour, thickness, cv2.LINE_AA, 4)
    else:
        side = rng.uniform(0.04, 0.12) * size
        box = ((*centre,), (side, side * rng.uniform(0.6, 1.0)), rng.uniform(0, 90))
        corners = np.round(cv2.boxPoints(box) * 16).astype(np.int32)
        cv2.fillPoly(image, [corners], colour, cv2.LINE_AA, 4)


def _point(xy: np.ndarray) -> tuple[int, int]:
    """Pixel coordinates in cv2's 4-bit fixed point, for sub-pixel drawing."""
    return round(xy[0] * 16), round(xy[1] * 16)


def _draw_nail(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    nail: _Nail,
    *,
    painted: bool,
    tip_rng: np.random.Generator | None = None,
) -> None:
    """Draws a shaded nail: base colour, a darker rim and a lighter band along its axis.

    With `tip_rng` the far end becomes a tip band in its own colour, labelled
    `TIP` and the rest `NAIL`; without, the whole nail is 255 in `mask`.
    """
    size = image.shape[0]
    region, along, across, radius = _nail_frame(nail, size)
    inside = radius <= 1.0
    if painted:
        base = _PAINTED_NAILS[rng.integers(len(_PAINTED_NAILS))]
    else:
        base = _NATURAL_NAIL + rng.normal(0, 8, 3)
    base = base.astype(np.float32) * rng.uniform(0.92, 1.06)
    if tip_rng is None:
        mask[region][inside] = 255
    else:
        tip = _tip_band(tip_rng, nail, along, across, base, painted=painted)
        base, labels = tip.colour, np.where(tip.inside, TIP, NAIL).astype(np.uint8)
        mask[region][inside] = labels[inside]
    rim = rng.uniform(0.18, 0.32) * _smoothstep(0.72, 1.0, radius)
    band_centre, band_width = rng.uniform(-0.35, 0.35), rng.uniform(0.15, 0.25)
    band = np.exp(-(((across - band_centre) / band_width) ** 2))
    band *= 1 - _smoothstep(0.55, 0.95, np.abs(along))
    highlight = rng.uniform(0.35, 0.6) * band
    colour = base * (1 - rim[..., None])
    colour += (255.0 - colour) * highlight[..., None]
    # One pixel of anti-aliasing on the image; the mask keeps the hard edge.
    edge_px = min(nail.half_length, nail.half_width)
    alpha = np.clip((1.0 - radius) * edge_px + 0.5, 0.0, 1.0)[..., None]
    image[region] = image[region] * (1 - alpha) + colour * alpha


@dataclasses.dataclass(frozen=True)
class _Tip:
    """A nail's tip band: per-pixel base colour `[h, w, 3]` and the band's pixels `[h, w]`."""

    colour: np.ndarray
    inside: np.ndarray


def _tip_band(
    rng: np.random.Generator,
    nail: _Nail,
    along: np.ndarray,
    across: np.ndarray,
    base: np.ndarray,
    *,
    painted: bool,
) -> _Tip:
    """Paints the nail's far end, past a smile-shaped line, over the base colour."""
    if painted:
        distances = np.linalg.norm(_TIP_COLOURS - base, axis=1)
        colour = _TIP_COLOURS[np.argmax(distances)]
    else:
        colour = _TIP_COLOURS[0]
    colour = (colour + rng.normal(0, 6, 3)).astype(np.float32) * rng.uniform(0.94, 1.04)
    # A French tip's inner edge dips towards the cuticle at the nail's sides.
    start = rng.uniform(0.3, 0.5) - rng.uniform(0.05, 0.2) * np.minimum(across**2, 1.0)
    beyond_px = (along - start) * nail.half_length
    weight = np.clip(beyond_px + 0.5, 0.0, 1.0)[..., None]
    return _Tip(base * (1 - weight) + colour * weight, beyond_px >= 0)


def _smoothstep(low: float, high: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _apply_camera(
    rng: np.random.Generator, image: np.ndarray, style: _GroupStyle, size: int
) -> np.ndarray:
    """Lighting, contrast, blur and sensor noise; returns the final uint8 image."""
    light = rng.uniform(*style.light_gain) * (
        1.0 + 0.15 * _low_frequency_noise(rng, size, grid=3, channels=1)
    )
    image = image * light
    mean = image.mean(axis=(0, 1), keepdims=True)
    image = mean + (image - mean) * rng.uniform(*style.contrast)
    blur_px = rng.uniform(*style.blur_sigma_px) * size / 256
    if blur_px > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur_px)
    image = image + rng.normal(0, style.noise_sigma, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
