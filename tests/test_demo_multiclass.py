"""The README's multi-class commands, end to end on the command line (slow).

synthetic --num_classes=3 -> prepare --check --num_classes=3 -> train
configs/demo_multiclass_cpu.py -> evaluate -> predict -> export --format=tflite.

It trains half the config's 600 steps (its cosine decay over 300), which is
enough to show that both classes are learnt and costs CI half the minutes;
the README's figures are those of the whole 600 steps.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

NAMES = ("background", "nail", "tip")
STEPS = 300


def test_multiclass_demo_learns_both_classes_and_every_tool_follows(tmp_path, run_module):
    data, workdir = str(tmp_path / "synthetic3"), str(tmp_path / "demo3")

    def run(module, *args):
        process = run_module(module, *args, timeout=3600)  # slow CPUs: see test_demo.py
        assert process.returncode == 0, process.stderr[-3000:]
        return process

    run("synthetic", f"--output_dir={data}", "--num_classes=3")
    run("prepare", f"--data_root={data}", "--num_classes=3", "--check", "--strict")
    run(
        "train",
        "--config=configs/demo_multiclass_cpu.py",
        f"--data_root={data}",
        f"--workdir={workdir}",
        f"--config.train.steps={STEPS}",
    )
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        valid = [json.loads(line) for line in f if '"valid"' in line]
    assert valid[-1]["step"] == STEPS
    best = max(valid, key=lambda r: r["iou"])
    # Measured on 2 cores of an AMD EPYC Zen 3: mean IoU 0.573 (nail 0.639, tip
    # 0.507) after 300 steps; 0.743 (0.792, 0.693) after the config's 600. The
    # bars leave room for other CPUs' kernels, which sum in another order; a
    # model that never predicts the tip gets 0 there.
    assert best["iou"] >= 0.45 and min(best["iou/nail"], best["iou/tip"]) >= 0.35, best

    run("evaluate", f"--model={workdir}", f"--data_root={data}")
    with open(os.path.join(workdir, "eval", "summary.json")) as f:
        summary = json.load(f)
    assert set(summary["per_class"]) == set(NAMES)
    assert summary["mean_iou"] == pytest.approx(best["iou"], abs=0.05)

    folder = tmp_path / "photos"  # two photos, predicted in one call
    folder.mkdir()
    for name in sorted(os.listdir(os.path.join(data, "Images", "1")))[:2]:
        shutil.copy(os.path.join(data, "Images", "1", name), folder / name)
    photos = sorted(str(path) for path in folder.iterdir())
    output = str(tmp_path / "predicted")
    run("predict", f"--model={workdir}/export", f"--input={folder}", f"--output={output}")
    for photo in photos:
        stem = os.path.splitext(os.path.basename(photo))[0]
        labels = np.asarray(Image.open(os.path.join(output, f"{stem}_mask.png")))
        assert labels.shape == np.asarray(Image.open(photo)).shape[:2]
        assert set(np.unique(labels)) <= {0, 1, 2} and len(np.unique(labels)) == 3

    tflite = str(tmp_path / "model.tflite")
    run("export", f"--model={workdir}", "--format=tflite", f"--output={tflite}")
    assert os.path.getsize(tflite) > 0
