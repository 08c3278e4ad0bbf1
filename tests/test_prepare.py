"""Tests of `python -m trainer.prepare`, run as the user runs it (few: each costs a start-up)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_REPO = Path(__file__).parents[1]


def _copy_images_and_masks(source: Path, root: Path) -> None:
    """Copies a data set without its manifests: other tests may have prepared the shared one."""
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("csv_file"))


def _prepare(*flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trainer.prepare", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=_REPO)


@pytest.fixture
def data_root(synthetic_root, tmp_path):
    root = tmp_path / "data"
    _copy_images_and_masks(synthetic_root, root)
    return root


def test_writes_manifests_and_logs_counts(data_root):
    completed = _prepare(f"--data_root={data_root}")
    assert completed.returncode == 0, completed.stderr
    assert (data_root / "csv_file/train.csv").is_file()
    assert (data_root / "csv_file/valid.csv").is_file()
    assert (data_root / "csv_file/problems.csv").read_text() == '"path","severity","message"\n'
    assert "valid: 9 pairs" in completed.stderr  # 3.8 + 2.4 + 2 + 1.4, each rounded
    assert "0 problem(s)" in completed.stderr and "Skipped" not in completed.stderr


def _damage(root: Path) -> dict[str, str]:
    """Spoils some pairs of the synthetic set; returns {relative path: expected line ending}."""
    (root / "Images/2/nail_00020.png").write_bytes(b"truncated")
    (root / "Masks/1/nail_00001.png").unlink()
    (root / "Images/1/nail_00002.png").unlink()
    mask = np.asarray(Image.open(root / "Masks/1/nail_00003.png"))
    Image.fromarray(mask[::2]).save(root / "Masks/1/nail_00003.png")  # squashed
    Image.fromarray(mask[::2, ::2]).save(root / "Masks/1/nail_00004.png")
    (root / "Masks/1/nail_00005.png").unlink()
    Image.fromarray(mask).save(root / "Masks/1/nail_00005.tif")  # TensorFlow reads no TIFF
    (root / "Masks/1/nail_00006.png").unlink()
    Image.fromarray(mask).save(root / "Masks/1/nail_00006.jpg", quality=70)
    image = root / "Images/1/nail_00007.png"
    Image.open(image).save(image.with_suffix(".tif"))
    image.unlink()
    return {
        "Images/2/nail_00020.png": "error: {}: the trainer cannot read this image (Unknown image",
        "Images/1/nail_00001.png": "error: {}: no mask ",
        "Masks/1/nail_00002.png": "error: {}: no image ",
        "Masks/1/nail_00003.png": "error: {}: mask is 64x32 but its image is 64x64: other",
        "Masks/1/nail_00004.png": "warning: {}: mask is 32x32 but its image is 64x64; both are",
        "Masks/1/nail_00005.tif": "error: {}: the trainer cannot read this mask (Unknown image",
        "Masks/1/nail_00006.jpg": "note: {}: mask is not binary: ",
        "Images/1/nail_00007.tif": "error: {}: the trainer cannot read this image (Unknown image",
    }


@pytest.mark.slow  # ~17 s: the check command twice on a tree of every problem
def test_check_lists_every_problem_and_strict_fails(data_root):
    expected = _damage(data_root)
    completed = _prepare(f"--data_root={data_root}", "--check", "--strict")
    assert completed.returncode == 1, completed.stderr
    lines = [line.split("] ", 1)[-1] for line in completed.stderr.splitlines()]
    for relative, start in expected.items():
        start = start.format(data_root / relative)
        assert sum(line.startswith(start) for line in lines) == 1, (start, completed.stderr)
    report = data_root / "csv_file/problems.csv"
    assert f"Skipped 6 unusable image/mask pairs; the list is in {report}" in lines
    assert "--strict fails" in completed.stderr
    manifests = [(data_root / "csv_file" / name).read_text() for name in ("train.csv", "valid.csv")]
    assert "nail_00020" not in "".join(manifests) and "nail_00005" not in "".join(manifests)

    # Without --check or --strict: the same manifests and report, a summary instead of the list.
    written = [(data_root / "csv_file" / name).read_bytes() for name in ("train.csv", "valid.csv")]
    report_bytes = report.read_bytes()
    completed = _prepare(f"--data_root={data_root}")
    assert completed.returncode == 0, completed.stderr
    assert "nail_00020" not in completed.stderr and "--check lists them" in completed.stderr
    assert f"Skipped 6 unusable image/mask pairs; the list is in {report}" in completed.stderr
    rewritten = [
        (data_root / "csv_file" / name).read_bytes() for name in ("train.csv", "valid.csv")
    ]
    assert rewritten == written and report.read_bytes() == report_bytes


def test_user_errors_exit_2_and_stray_arguments_are_rejected(tmp_path):
    completed = _prepare(f"--data_root={tmp_path / 'missing'}")
    assert completed.returncode == 2
    assert "error: data root" in completed.stderr and "missing" in completed.stderr
    assert "Traceback" not in completed.stderr
    completed = _prepare(f"--data_root={tmp_path}", "stray")
    assert completed.returncode == 1 and "unexpected arguments: stray" in completed.stderr


def _error_lines(completed: subprocess.CompletedProcess) -> list[str]:
    return [line for line in completed.stderr.splitlines() if line.startswith("error: ")]


def test_num_classes_checks_label_index_masks(tmp_path):
    labels = np.repeat(np.array([0, 1, 2, 255], np.uint8), 3)[:, None].repeat(8, axis=1)
    for index in range(4):
        for side, pixels in (("Images", np.full((12, 8, 3), 120, np.uint8)), ("Masks", labels)):
            (tmp_path / side / "1").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / side / "1" / f"{index}.png")
    completed = _prepare(f"--data_root={tmp_path}")
    assert completed.returncode == 2, completed.stderr
    (line,) = _error_lines(completed)
    assert line.startswith(f"error: the train split of {tmp_path} is empty: 0 usable pair(s)")
    assert "pass --config.model.num_classes=3 to train (and --num_classes=3 to prepare)" in line
    assert "Traceback" not in completed.stderr

    completed = _prepare(f"--data_root={tmp_path}", "--num_classes=3", "--strict")
    assert completed.returncode == 0, completed.stderr
    assert "train: 3 pairs" in completed.stderr and "0 problem(s)" in completed.stderr
    assert (tmp_path / "csv_file/problems.csv").read_text() == '"path","severity","message"\n'


@pytest.mark.parametrize(
    "flags, start",
    [
        (["--num_classes=0"], "error: --num_classes=0: give 1 for binary masks"),
        (["--ignore_label=256"], "error: --ignore_label=256: masks hold 8-bit values"),
        (["--num_classes=3", "--ignore_label=2"], "error: --ignore_label=2 is one of the classes"),
    ],
)
def test_bad_class_flags_exit_2_with_one_line(tmp_path, flags, start):
    completed = _prepare(f"--data_root={tmp_path}", *flags)
    assert completed.returncode == 2, completed.stderr
    (line,) = _error_lines(completed)
    assert line.startswith(start) and "Traceback" not in completed.stderr
    assert not (tmp_path / "csv_file").exists()
