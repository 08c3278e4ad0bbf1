"""Tests of the decoding check: every bad file gets a severity and words that name it."""

import io
import os
from pathlib import Path

from trainer.data import check, decode, layout

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

_W, _H = 8, 6


def _half_mask(size=(_W, _H)) -> np.ndarray:
    pixels = np.zeros(size[::-1], np.uint8)
    pixels[: size[1] // 2] = 255
    return pixels


def _save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def _rgb(size=(_W, _H)) -> np.ndarray:
    return np.full((*size[::-1], 3), 120, np.uint8)


def _found(root: Path, rows: list[tuple[str, str]], **classes) -> dict[tuple[str, str], str]:
    """Runs the check on `rows` (paths relative to root): {(relative path, severity): messages}.

    Two messages of one file and severity are joined by ' | '. `classes`:
    `num_classes` and `ignore_label` for `check.check_pairs`.
    """
    frame = pd.DataFrame(
        [(str(root / image), str(root / mask)) for image, mask in rows], columns=["images", "masks"]
    )
    found = {}
    for problem in check.check_pairs(frame, max_workers=2, **classes):
        key = (Path(problem.path).relative_to(root).as_posix(), problem.severity)
        found[key] = f"{found[key]} | {problem.message}" if key in found else problem.message
    return found


def test_clean_pairs_in_every_format_the_trainer_reads(tmp_path):
    # Grayscale, RGBA, 16-bit and palette images; RGB, 16-bit and 0/1 masks: the decoders
    # convert them all to 3 and 1 channels.
    _save(tmp_path / "gray.png", _rgb()[..., 0])
    _save(tmp_path / "rgba.png", np.dstack([_rgb(), np.full((_H, _W), 9, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), _rgb().astype(np.uint16) * 257)
    _save(tmp_path / "palette.png", np.asarray(Image.fromarray(_rgb()).convert("P")))
    _save(tmp_path / "photo.jpg", _rgb())
    _save(tmp_path / "photo.bmp", _rgb())
    _save(tmp_path / "mask.png", _half_mask())
    _save(tmp_path / "mask_rgb.png", np.dstack([_half_mask()] * 3))
    cv2.imwrite(str(tmp_path / "mask16.png"), _half_mask().astype(np.uint16) * 257)
    labels = (_half_mask() // 255).astype(np.uint8)  # 0/1 label-index mask
    _save(tmp_path / "labels.png", labels)
    rows = [
        ("gray.png", "mask.png"),
        ("rgba.png", "mask_rgb.png"),
        ("deep.png", "mask16.png"),
        ("palette.png", "labels.png"),
        ("photo.jpg", "mask.png"),
        ("photo.bmp", "mask.png"),
    ]
    assert _found(tmp_path, rows) == {}


def test_files_the_trainer_cannot_decode_are_errors(tmp_path):
    _save(tmp_path / "ok.png", _rgb())
    _save(tmp_path / "mask.png", _half_mask())
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.png").write_bytes(b"")
    whole = io.BytesIO()
    Image.fromarray(_rgb((64, 48))).save(whole, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(whole.getvalue()[:300])
    _save(tmp_path / "scan.tif", _rgb())  # OpenCV reads TIFF; TensorFlow does not
    rows = [
        ("garbage.png", "mask.png"),
        ("empty.png", "mask.png"),
        ("truncated.jpg", "mask.png"),
        ("scan.tif", "mask.png"),
        ("ok.png", "missing.png"),
    ]
    found = _found(tmp_path, rows)
    assert set(found) == {
        ("garbage.png", "error"),
        ("empty.png", "error"),
        ("truncated.jpg", "error"),
        ("scan.tif", "error"),
        ("missing.png", "error"),
    }
    assert found["scan.tif", "error"] == (
        "the trainer cannot read this image (Unknown image file format. One of JPEG, JPEG XL, "
        "PNG, GIF, BMP, WebP required.); replace it or re-save it as PNG"
    )
    assert "No such file or directory" in found["missing.png", "error"]
    assert not any("function_node" in message or "[Op:" in message for message in found.values())


def test_mask_sizes_and_contents(tmp_path):
    _save(tmp_path / "image.png", _rgb())
    _save(tmp_path / "half_scale.png", _half_mask((_W // 2, _H // 2)))
    _save(tmp_path / "rotated.png", _half_mask((_H, _W)))
    _save(tmp_path / "empty.png", np.zeros((_H, _W), np.uint8))
    _save(tmp_path / "full.png", np.full((_H, _W), 255, np.uint8))
    soft = _half_mask()
    soft[0, :3] = 100  # 3 of 48 pixels between 1 and 254
    _save(tmp_path / "soft.png", soft)
    _save(tmp_path / "photo.png", (np.arange(48) * 5 + 10).astype(np.uint8).reshape(_H, _W))
    rows = [
        ("image.png", name)
        for name in ("half_scale.png", "rotated.png", "empty.png", "full.png", "soft.png")
    ] + [("image.png", "photo.png")]
    found = _found(tmp_path, rows)
    assert found == {
        ("half_scale.png", "warning"): (
            "mask is 4x3 but its image is 8x6; both are resized to the training size"
        ),
        ("rotated.png", "error"): (
            "mask is 6x8 but its image is 8x6: other proportions, so it cannot line up with "
            "its image (rotated, or from another photo?)"
        ),
        ("empty.png", "note"): "mask is empty (no foreground)",
        ("full.png", "note"): "mask is entirely foreground",
        ("soft.png", "note"): (
            "mask is not binary: 3 of 48 pixels (6.2%) are between 1 and 254; the trainer "
            "binarises it at 127"
        ),
        ("photo.png", "warning"): (
            "mask is not binary: 48 of 48 pixels (100.0%) are between 1 and 254; the trainer "
            "binarises it at 127; is it a mask?"
        ),
    }


def test_jpeg_mask_noise_is_a_note_with_a_count(tmp_path):
    _save(tmp_path / "image.png", _rgb((64, 48)))
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    _save(tmp_path / "mask.jpg", mask, quality=75)
    ((key, message),) = _found(tmp_path, [("image.png", "mask.jpg")]).items()
    assert key == ("mask.jpg", "note")
    assert message.startswith("mask is not binary: ") and "of 3072 pixels" in message


def test_a_file_name_that_is_not_utf8_is_an_error(tmp_path):
    _save(tmp_path / "mask.png", _half_mask())
    raw_name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")  # Latin-1 on a UTF-8 system
    with open(raw_name, "wb") as file:
        Image.fromarray(_rgb()).save(file, format="PNG")
    image = os.fsdecode(raw_name)
    frame = pd.DataFrame([(image, str(tmp_path / "mask.png"))], columns=["images", "masks"])
    (problem,) = check.check_pairs(frame)
    assert (problem.path, problem.severity) == (image, "error")
    assert "not valid UTF-8" in problem.message


def test_drop_unusable_counts_pairs_and_unpaired_files(tmp_path):
    _save(tmp_path / "good.png", _rgb())
    _save(tmp_path / "good_mask.png", _half_mask())
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "bad_mask.png").write_bytes(b"nope")  # both files bad: one pair skipped
    _save(tmp_path / "empty_mask.png", np.zeros((_H, _W), np.uint8))
    pairs = pd.DataFrame(
        [
            (str(tmp_path / a), str(tmp_path / b), "1")
            for a, b in [
                ("good.png", "good_mask.png"),
                ("bad.png", "bad_mask.png"),
                ("good.png", "empty_mask.png"),
            ]
        ],
        columns=["images", "masks", "group"],
    )
    unpaired = [
        layout.Problem(str(tmp_path / "lonely.png"), "no mask"),
        layout.Problem("x", "n", "note"),
    ]
    usable, problems, num_skipped = check.drop_unusable(pairs, unpaired, max_workers=1)
    assert list(usable["masks"]) == [
        str(tmp_path / "good_mask.png"),
        str(tmp_path / "empty_mask.png"),
    ]
    assert num_skipped == 2  # the bad pair and the lonely image; notes skip nothing
    assert [p.path for p in problems] == sorted(p.path for p in problems)
    assert len(problems) == 2 + 2 + 1  # two undecodable files, the scan's two, one empty mask


def test_clean_synthetic_data_set(synthetic_root):
    assert check.check_pairs(layout.scan(synthetic_root).pairs) == []


def test_accepted_files_decode_with_the_trainers_decoders(tmp_path):
    """Whatever the check lets through, the pipeline reads (the check's contract)."""
    names = {
        "a.png": _rgb(),
        "b.jpg": _rgb(),
        "c.bmp": _rgb(),
        "m.png": _half_mask(),
        "m.jpg": _half_mask(),
        "m.bmp": _half_mask(),
        "m.webp": _half_mask(),
    }
    for name, pixels in names.items():
        _save(tmp_path / name, pixels)
    images = [str(tmp_path / n) for n in ("a.png", "b.jpg", "c.bmp")]
    masks = [str(tmp_path / n) for n in ("m.png", "m.jpg", "m.bmp", "m.webp")]
    pairs = pd.DataFrame([(i, m) for i in images for m in masks], columns=["images", "masks"])
    usable, _, num_skipped = check.drop_unusable(pairs, [], max_workers=2)
    assert num_skipped == 0
    for image, mask in zip(usable["images"], usable["masks"]):
        assert decode.decode_image(tf.constant(image)).shape == (_H, _W, 3)
        assert decode.decode_mask(tf.constant(mask)).shape == (_H, _W, 1)


@pytest.mark.parametrize("severity", layout.SEVERITIES)
def test_problem_prints_severity_path_message(severity):
    assert str(layout.Problem("/d/a.png", "broken", severity)) == f"{severity}: /d/a.png: broken"


def test_a_16_bit_label_mask_that_reads_as_empty_is_an_error(tmp_path):
    _save(tmp_path / "image.png", _rgb())
    labels = (_half_mask() // 255).astype(np.uint16)  # 0/1 in 16 bits: 0 once read as 8 bits
    cv2.imwrite(str(tmp_path / "labels16.png"), labels)
    dim = (_half_mask() // 255 * 100).astype(np.uint8)  # 8 bits, all below the threshold
    _save(tmp_path / "dim.png", dim)
    faint = dim.copy()
    faint[0, 1::2] = 90  # a soft map below the threshold rather than an area per value
    _save(tmp_path / "faint.png", faint)
    rows = [("image.png", "labels16.png"), ("image.png", "dim.png"), ("image.png", "faint.png")]
    found = _found(tmp_path, rows)
    assert found == {
        ("labels16.png", "error"): (
            "16-bit mask with values up to 1: the trainer reads 8 bits, which leaves it empty; "
            "save it as an 8-bit PNG with values 0/255 or 0/1"
        ),
        # An area of one value below 128 reads as label indices: binarised, it is empty.
        ("dim.png", "error"): _label_error("0, 100", 101),
        ("faint.png", "note"): (
            "mask is empty (no foreground) | mask is not binary: 24 of 48 pixels (50.0%) are "
            "between 1 and 254; the trainer binarises it at 127"
        ),
    }
    found = _found(tmp_path, [("image.png", "labels16.png")], num_classes=3)
    assert found == {
        ("labels16.png", "error"): (
            "16-bit mask with values up to 1: the trainer reads 8 bits, which leaves it all "
            "background; save it as an 8-bit PNG with label values 0..2"
        ),
    }


# ---------------------------------------------------------------- classes


def _label_error(values: str, count: int, ignored: str = "") -> str:
    flag = f"num_classes={count}"
    return (
        f"mask holds label values {values} (a label-index mask of {count} classes{ignored}?); "
        f"the binary trainer would binarise it at 127 and lose them: pass --config.model.{flag} "
        f"to train (and --{flag} to prepare)"
    )


def _labels(size=(_W, _H), classes=(0, 1, 2)) -> np.ndarray:
    """A label-index mask: one band of rows per class, each at least 3 pixels high."""
    bands = np.array_split(np.arange(size[1]), len(classes))
    pixels = np.zeros(size[::-1], np.uint8)
    for value, rows in zip(classes, bands):
        pixels[rows] = value
    return pixels


def test_binary_check_takes_label_index_masks_for_errors(tmp_path):
    _save(tmp_path / "image.png", _rgb((16, 12)))
    _save(tmp_path / "labels.png", _labels((16, 12)))
    voc = _labels((16, 12), classes=(0, 1, 2, 12))
    voc[:, 7] = 255  # VOC-style: the ignore label on boundaries
    _save(tmp_path / "voc.png", voc)
    many = np.zeros((12, 16), np.uint8)  # classes 0..9, a 6x3 tile each
    many[:, :15] = np.kron(np.arange(10, dtype=np.uint8).reshape(2, 5), np.ones((6, 3), np.uint8))
    _save(tmp_path / "many.png", many)
    found = _found(
        tmp_path,
        [("image.png", "labels.png"), ("image.png", "voc.png"), ("image.png", "many.png")],
    )
    assert found == {
        ("labels.png", "error"): _label_error("0, 1, 2", 3),
        ("voc.png", "error"): _label_error("0, 1, 2, 12 and 255", 13, ", 255 ignored"),
        ("many.png", "error"): _label_error("0, 1, 2, 3, 4, 5, 6, 7, ...", 10),
    }
    # As label indices of enough classes, they are clean.
    assert _found(tmp_path, [("image.png", "labels.png")], num_classes=3) == {}


def test_binary_check_does_not_take_0_255_masks_with_gray_edges_for_labels(tmp_path):
    size = (64, 48)
    _save(tmp_path / "image.png", _rgb(size))
    box = np.zeros(size[::-1], np.uint8)
    box[10:30, 20:50] = 255
    disc = np.zeros(size[::-1], np.uint8)
    cv2.circle(disc, (30, 24), 15, 255, -1, lineType=cv2.LINE_AA)  # antialiased edge
    cv2.fillPoly(disc, [np.array([[2, 2], [14, 5], [6, 20]], np.int32)], 255, cv2.LINE_AA)
    cv2.line(disc, (40, 44), (62, 30), 255, 1, lineType=cv2.LINE_AA)  # a thin line: no area
    odd_box = np.roll(box, 1, axis=(0, 1))  # edges inside the 2x2 cells averaged below
    small = cv2.resize(odd_box, (32, 24), interpolation=cv2.INTER_AREA)
    for name, pixels in {"box": box, "disc": disc}.items():
        for quality in (30, 75, 95):
            _save(tmp_path / f"{name}_{quality}.jpg", pixels, quality=quality)
    _save(tmp_path / "disc.png", disc)
    _save(tmp_path / "small.png", small)
    _save(tmp_path / "zero_one.png", (box // 255).astype(np.uint8))
    masks = sorted(path.name for path in tmp_path.iterdir() if path.name != "image.png")
    assert len(masks) == 9 and len(np.unique(disc)) > 10  # the edges are antialiased
    assert len(np.unique(small)) > 2
    found = _found(tmp_path, [("image.png", mask) for mask in masks])
    assert {severity for _, severity in found} <= {"note", "warning"}, found
    assert not any("label" in message for message in found.values())
    assert ("disc.png", "note") in found and ("small.png", "note") in found
    assert ("zero_one.png", "note") not in found


def test_palette_png_indices_are_read_as_labels(tmp_path):
    _save(tmp_path / "image.png", _rgb((16, 12)))
    indices = Image.fromarray(_labels((16, 12)), mode="P")
    indices.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0])  # VOC's first colours
    indices.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    rows = [("image.png", "palette.png")]
    assert _found(tmp_path, rows) == {("palette.png", "error"): _label_error("0, 1, 2", 3)}
    assert _found(tmp_path, rows, num_classes=3) == {}


def test_multi_class_check_names_values_that_are_no_class(tmp_path):
    _save(tmp_path / "image.png", _rgb((16, 12)))
    masks = {
        "clean.png": _labels((16, 12), classes=(0, 1, 2, 255)),
        "three.png": _labels((16, 12), classes=(0, 3)),
        "strays.png": _labels((16, 12), classes=(0, 1, 3, 7)),
        "binary.png": _labels((16, 12), classes=(0, 255)),
        "background.png": np.zeros((12, 16), np.uint8),
        "ignored.png": np.full((12, 16), 255, np.uint8),
        "half_scale.png": _labels((8, 6), classes=(0, 1)),
    }
    for name, pixels in masks.items():
        _save(tmp_path / name, pixels)
    _save(tmp_path / "noisy.jpg", _labels((16, 12)) * 80, quality=60)  # gray is no class
    rows = [("image.png", name) for name in [*masks, "noisy.jpg"]]
    found = _found(tmp_path, rows, num_classes=3, ignore_label=255)
    assert found.pop(("noisy.jpg", "error")).endswith(
        "; JPEG compression alters label values: save label masks as PNG"
    )
    suffix = "of --config.model.num_classes=3 (0..2) nor the ignore label 255"
    assert found == {
        ("three.png", "error"): f"value 3 is not a class {suffix}; relabel it or raise num_classes",
        ("strays.png", "error"): (
            f"values 3, 7 are not classes {suffix}; relabel them or raise num_classes"
        ),
        ("binary.png", "warning"): (
            "mask holds only 0 and 255, as a 0/255 binary mask does: with "
            "--config.model.num_classes=3, 255 is the ignore label, so all its foreground "
            "would be ignored; set --config.model.num_classes=1 for binary masks"
        ),
        ("background.png", "note"): "no foreground class in this mask",
        ("ignored.png", "note"): "every pixel is the ignore label 255: no loss counts this mask",
        ("half_scale.png", "warning"): (
            "mask is 8x6 but its image is 16x12; both are resized to the training size"
        ),
    }


def test_multi_class_check_with_another_ignore_label(tmp_path):
    _save(tmp_path / "image.png", _rgb((16, 12)))
    _save(tmp_path / "binary.png", _labels((16, 12), classes=(0, 255)))
    _save(tmp_path / "ignore.png", _labels((16, 12), classes=(0, 200)))
    rows = [("image.png", "binary.png"), ("image.png", "ignore.png")]
    assert _found(tmp_path, rows, num_classes=2, ignore_label=200) == {
        ("binary.png", "error"): (
            "value 255 is not a class of --config.model.num_classes=2 (0..1) nor the ignore "
            "label 200; relabel it or raise num_classes; a 0/255 binary mask? set "
            "--config.model.num_classes=1 for those"
        ),
        ("ignore.png", "note"): "no foreground class in this mask",
    }


def test_drop_unusable_checks_for_the_classes_given(tmp_path):
    _save(tmp_path / "image.png", _rgb((16, 12)))
    _save(tmp_path / "labels.png", _labels((16, 12)))
    pairs = pd.DataFrame(
        [(str(tmp_path / "image.png"), str(tmp_path / "labels.png"))], columns=["images", "masks"]
    )
    usable, problems, num_skipped = check.drop_unusable(pairs, [], max_workers=1)
    assert (len(usable), num_skipped, problems[0].severity) == (0, 1, "error")
    usable, problems, num_skipped = check.drop_unusable(
        pairs, [], max_workers=1, num_classes=3, ignore_label=255
    )
    assert (len(usable), num_skipped, problems) == (1, 0, [])
    assert check.check_pair(str(tmp_path / "image.png"), str(tmp_path / "labels.png"))
