"""Every benchmark's `--quick` mode runs to the end, so that the benchmarks cannot rot (slow).

All but `allocator`, which is `onednn` with other environment variables: the
run of `onednn` covers the code they share (`benchmarks/environment.py`).

Each benchmark runs in a subprocess, as a user runs it, with its results and
synthetic photos in a temporary folder (`--results_dir`, `--data_dir`): the
repository's `benchmarks/results/` and `benchmarks/.data/` are left alone. A
quick run measures nothing; the tests check that it exits 0, prints its
headline (a `GOAL ...: value` or `RATIO ...: value` line with a figure) and
writes its results file.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
# A figure, not '-': the variants behind the headline ran.
_HEADLINE = re.compile(r"^(GOAL|RATIO) .+: [0-9]", re.MULTILINE)
_TIMEOUT_S = 1800  # the slowest quick mode took ~8 minutes on 2 busy cores of an AMD EPYC (Zen 3)

pytestmark = pytest.mark.slow


def run_quick(name: str, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """Runs `python -m benchmarks.NAME --quick` writing only under tmp_path."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"benchmarks.{name}",
            "--quick",
            f"--results_dir={tmp_path / 'results'}",
            f"--data_dir={tmp_path / 'data'}",
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )


def results_snapshot() -> dict:
    """The repository's results files and their modification times."""
    return {path.name: path.stat().st_mtime_ns for path in RESULTS.glob("*")}


@pytest.mark.parametrize(
    "name, flags",
    [
        ("input_pipeline", ()),
        ("input_bound", ()),
        ("replicas", ()),
        ("precision", ()),
        # allocator.py is onednn.py with other variants (benchmarks/environment.py).
        ("onednn", ()),
        ("steps_per_execution", ()),
        ("recipe", ()),  # without --data_root: a tiny synthetic train/ + valid/ set
        # gpu_seed needs a GPU; --allow_cpu runs the same script on the CPU.
        ("gpu_seed", ("--allow_cpu",)),
    ],
)
def test_quick_mode_exits_0_and_prints_its_ratio(name, flags, tmp_path):
    before = results_snapshot()
    process = run_quick(name, tmp_path, *flags)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-5000:]
    assert _HEADLINE.search(process.stdout), process.stdout[-5000:]
    assert "QUICK RUN" in process.stdout
    assert (tmp_path / "results" / f"{name}.quick.json").is_file()
    assert results_snapshot() == before


def test_gpu_seed_quick_mode_without_a_gpu_says_so_and_exits_0(tmp_path):
    process = run_quick("gpu_seed", tmp_path)
    assert process.returncode == 0, (process.stdout + process.stderr)[-5000:]
    if "no GPU found" in process.stdout:
        assert not (tmp_path / "results").exists()  # nothing measured, nothing written
    else:  # a machine with a GPU runs it
        assert _HEADLINE.search(process.stdout), process.stdout[-5000:]


def test_recipe_final_quick_mode_reports_the_valid_iou_goal(tmp_path):
    process = run_quick("recipe", tmp_path, "--final")
    assert process.returncode == 0, (process.stdout + process.stderr)[-5000:]
    assert re.search(r"^GOAL valid IoU >= 0.75: [0-9]", process.stdout, re.MULTILINE)
    assert (tmp_path / "results" / "recipe_final.quick.json").is_file()


def test_records_quick_mode_measures_the_four_variants(tmp_path):
    before = results_snapshot()
    process = run_quick("records", tmp_path)
    assert process.returncode == 0, (process.stdout + process.stderr)[-5000:]
    assert _HEADLINE.search(process.stdout), process.stdout[-5000:]
    assert "QUICK RUN" in process.stdout
    record = json.loads((tmp_path / "results" / "records.quick.json").read_text())
    rows = {(row["storage"], row["source"]): row for row in record["rows"]}
    assert set(rows) == {(s, f) for s in ("local", "ram") for f in ("folder", "records")}
    for row in rows.values():
        assert row["startup_s"] > 0 and row["images_per_sec"] > 0, row
        assert row["prepare_s"] > 0, row
    assert rows["local", "records"]["write_records_s"] > 0
    assert record["machine"]["cpu_count"] and "load_after" in record
    assert results_snapshot() == before
