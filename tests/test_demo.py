"""The README's demo: the CPU config learns the synthetic set as the README says (slow)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_config_reaches_valid_iou_of_0_82(tmp_path):
    data, workdir = str(tmp_path / "synthetic"), str(tmp_path / "demo")
    subprocess.run(
        [sys.executable, "-m", "trainer.synthetic", f"--output_dir={data}"], cwd=REPO, check=True
    )
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.train",
            "--config=configs/demo_cpu.py",
            f"--data_root={data}",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        # 8.5 minutes alone on 2 cores of an AMD EPYC Zen 3 (AVX2 only), 15 in CI.
        timeout=3600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        valid = [json.loads(line) for line in f if '"valid"' in line]
    assert valid[-1]["step"] == 600
    # Measured 0.850 at step 600 (2 cores of an AMD EPYC Zen 3); the bar leaves
    # room for other CPUs' kernels, which sum in another order.
    assert max(r["iou"] for r in valid) >= 0.82, valid
