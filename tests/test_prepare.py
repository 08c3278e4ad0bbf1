"""Tests of `python -m trainer.prepare`, run as the user runs it (few: each costs a start-up)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).parents[1]


def _prepare(*flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "trainer.prepare", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=_REPO)


@pytest.fixture
def data_root(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def test_writes_manifests_and_logs_counts(data_root):
    completed = _prepare(f"--data_root={data_root}")
    assert completed.returncode == 0, completed.stderr
    assert (data_root / "csv_file/train.csv").is_file()
    assert (data_root / "csv_file/valid.csv").is_file()
    assert "valid: 9 pairs" in completed.stderr  # 3.8 + 2.4 + 2 + 1.4, each rounded


@pytest.fixture
def corrupt_root(data_root):
    corrupt = data_root / "Images/2/nail_00020.png"
    corrupt.write_bytes(b"truncated")
    return data_root


def test_check_strict_fails_on_a_corrupt_image(corrupt_root):
    completed = _prepare(f"--data_root={corrupt_root}", "--check", "--strict")
    assert completed.returncode == 1
    assert "Images/2/nail_00020.png: does not decode" in completed.stderr


def test_check_without_strict_reports_and_succeeds(corrupt_root):
    completed = _prepare(f"--data_root={corrupt_root}", "--check")
    assert completed.returncode == 0, completed.stderr
    assert "Images/2/nail_00020.png: does not decode" in completed.stderr


def test_user_errors_exit_2_and_stray_arguments_are_rejected(tmp_path):
    completed = _prepare(f"--data_root={tmp_path / 'missing'}")
    assert completed.returncode == 2
    assert "error: data root" in completed.stderr and "missing" in completed.stderr
    completed = _prepare(f"--data_root={tmp_path}", "stray")
    assert completed.returncode == 1 and "unexpected arguments: stray" in completed.stderr
