"""The README's demo: the CPU config learns the synthetic set (slow).

It trains half the config's 600 steps (its cosine decay over 300), as
tests/test_demo_multiclass.py does: enough to show the recipe learns, for half
of CI's longest test; the README's figure (0.850) is that of the whole 600.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 300


@pytest.mark.slow
def test_demo_config_learns_the_synthetic_set_in_half_its_steps(tmp_path):
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
            f"--config.train.steps={STEPS}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        # 600 steps: 8.5 minutes alone on 2 cores of an AMD EPYC Zen 3 (AVX2 only), 15 in CI.
        timeout=3600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        valid = [json.loads(line) for line in f if '"valid"' in line]
    assert valid[-1]["step"] == STEPS
    # Measured on 2 cores of an AMD EPYC Zen 3: 0.190, 0.591, 0.709 at steps
    # 100, 200, 300 (0.850 after the config's 600). The bar leaves room for
    # other CPUs' kernels, which sum in another order.
    assert max(r["iou"] for r in valid) >= 0.60, valid
