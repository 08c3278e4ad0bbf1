"""The seed's setup on one GPU: float32 vs mixed_float16 vs mixed_float16 + XLA.

    python -m benchmarks.gpu_seed                        # on a GPU machine, < 8 minutes
    python -m benchmarks.gpu_seed --steps=10 --time_limit_s=300
    python -m benchmarks.gpu_seed --allow_cpu --quick    # proves the script runs, on a CPU

The seed's config (configs/nail_unet_effb4.py: Unet + EfficientNet-B4, 384 px,
global batch 32), encoder weights none (no download), trained with the
trainer's own functions on in-memory batches, so that only the GPU step is
measured. Each variant runs in its own process (the precision policy is
global) and reports images/s over `--steps` timed steps after warm-up (the
first call traces and compiles), the allocator's peak GPU memory
(`tf.config.experimental.get_memory_info('GPU:0')['peak']`), and the model
FLOPs utilisation:

    MFU = FLOPs per step x steps/s / the GPU's peak FLOP/s
    FLOPs per step = 3 x forward FLOPs per image (TF profiler, see
                     harness.forward_flops) x global batch   (backward ~ 2x forward)

The peak is the dense data-sheet figure of the math the variant runs on (see
GPU_PEAK_FLOPS): fp16 tensor cores for mixed_float16, TF32 tensor cores for
float32 when TensorFlow's TF32 execution is on (its default), plain fp32 when
off. Goal: mixed_float16 + XLA >= 2x float32 images/s.

Without a GPU it says so and exits with status 0, measuring nothing.
`--time_limit_s` bounds the whole run: variants that would start too late
are skipped. TensorFlow is imported in the children only.
"""

import re
import time

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import cli

from absl import flags

from benchmarks import measure, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/nail_unet_effb4.py")
runner.define_timing_flags(warmup_calls=2)
flags.DEFINE_list(
    "variants",
    ["float32", "mixed_float16", "mixed_float16+xla"],
    "Precisions to compare; '+xla' sets jit_compile.",
)
flags.DEFINE_integer("steps", 20, "Timed train steps per variant.")
flags.DEFINE_integer("steps_per_call", 0, "Steps per train-function call; 0: the config's.")
flags.DEFINE_integer("time_limit_s", 450, "Wall-clock bound of the whole run, seconds.")
flags.DEFINE_bool("allow_cpu", False, "Run without a GPU (to test the script; no figures).")
flags.DEFINE_bool("count_flops", False, "Internal: count the forward FLOPs in this child.")
FLAGS = flags.FLAGS

# Dense peak FLOP/s (no structured sparsity) from NVIDIA's data sheets, by the
# math units a variant runs on. The H200 has the H100 SXM's compute.
_H100_SXM = {"fp16": 989.4e12, "bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}
GPU_PEAK_FLOPS = {
    "H100 SXM": _H100_SXM,
    "H200": _H100_SXM,
    "H100 PCIe": {"fp16": 756.5e12, "bf16": 756.5e12, "tf32": 378.0e12, "fp32": 51.2e12},
    "A100": {"fp16": 312.0e12, "bf16": 312.0e12, "tf32": 156.0e12, "fp32": 19.5e12},
    "L4": {"fp16": 121.0e12, "bf16": 121.0e12, "tf32": 60.0e12, "fp32": 30.3e12},
}
_MATH_UNITS = {"mixed_float16": "fp16", "mixed_bfloat16": "bf16"}
# A variant is not started with less time than this left: it could not finish.
_MIN_CHILD_S = 60
# The two variants of the goal prove the script runs.
_QUICK = {"steps": 2, "warmup_calls": 1, "variants": ["float32", "mixed_float16+xla"]}


def gpu_kind(name: str) -> str | None:
    """The GPU_PEAK_FLOPS key of a device name such as 'NVIDIA H100 80GB HBM3'."""
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100 PCIe" if "PCIe" in name else "H100 SXM"
    if "A100" in name:
        return "A100"
    if re.search(r"\bL4\b", name):
        return "L4"
    return None


def run_child(variant: str) -> dict:
    """Trains one variant on the GPU; returns timing, peak memory and (optionally) FLOPs."""
    import tensorflow as tf

    from benchmarks import harness

    precision, _, xla = variant.partition("+")
    config = measure.config_from_json(FLAGS.config_json)
    config.train.precision = precision
    config.train.jit_compile = xla == "xla"
    trainee = harness.build_trainee(config, harness.one_device_strategy())
    size = config.data.image_size
    flops = harness.forward_flops(trainee.model, size) if FLAGS.count_flops else None
    iterator = harness.in_memory_batches(trainee, size)
    steps_per_call = FLAGS.steps_per_call or config.train.steps_per_execution
    timing = harness.time_training(
        trainee,
        iterator,
        config,
        steps_per_call=steps_per_call,
        warmup_calls=FLAGS.warmup_calls,
        timed_calls=max(1, FLAGS.steps // steps_per_call),
    )
    peak_bytes = harness.gpu_memory_peak_bytes()
    return {
        **timing,
        "steps_per_call": steps_per_call,
        "forward_flops_per_image": flops,
        "gpu_peak_gib": None if peak_bytes is None else peak_bytes / 2**30,
        "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
    }


def peak_for(row: dict, gpu: str | None) -> tuple[str | None, float | None]:
    """The math units of a variant and the GPU's peak FLOP/s for them."""
    units = _MATH_UNITS.get(row["precision"], "tf32" if row.get("tf32") else "fp32")
    peaks = GPU_PEAK_FLOPS.get(gpu_kind(gpu or "") or "")
    return units, (peaks or {}).get(units)


def run_parent() -> int:
    """Runs each variant in its own process within the time limit; judges the speed-up."""
    deadline = time.monotonic() + FLAGS.time_limit_s
    if not FLAGS["wait_quiet_s"].present:
        # The GPU window is short, and host load barely moves a GPU-bound step;
        # the load is still recorded, and warned about.
        FLAGS.wait_quiet_s = 0
    gpus = runner.probe_gpus()
    if not gpus and not FLAGS.allow_cpu:
        print(
            "gpu_seed: no GPU found (TensorFlow lists none). This benchmark needs one; "
            "nothing was measured. (--allow_cpu runs it on the CPU to test the script.)"
        )
        return 0
    config = runner.config_for_child(FLAGS.config)
    settings = {
        **runner.config_settings(config, varied=("precision", "steps_per_execution")),
        "gpu": gpus[0] if gpus else None,
        "variants": FLAGS.variants,
        **{name: FLAGS[name].value for name in ("steps", "warmup_calls", "time_limit_s")},
    }
    title = f"the seed's setup on {gpus[0] if gpus else 'the CPU (test only)'}"
    record = report.start("gpu_seed", title, settings)
    rows, flops = [], None
    for variant in FLAGS.variants:
        left_s = deadline - time.monotonic()
        if left_s < _MIN_CHILD_S:
            rows.append({"variant": variant, "error": f"skipped: {left_s:.0f} s left"})
            continue
        args = {
            "config_json": config,
            "count_flops": flops is None,
            **{n: FLAGS[n].value for n in ("steps", "steps_per_call", "warmup_calls")},
        }
        row = runner.run_child("gpu_seed", variant, args, timeout_s=left_s)
        row["precision"] = variant.partition("+")[0]
        flops = flops or row.get("forward_flops_per_image")
        rows.append(row)
    goals, notes = _judge(rows, flops, config.data.batch_size, gpus[0] if gpus else None)
    columns = [
        report.Column("variant", "variant"),
        report.IMAGES_PER_SEC,
        report.Column("speedup", "vs float32", ".2f"),
        report.FIRST_CALL_S,
        report.Column("gpu_peak_gib", "GPU peak GiB", ".2f"),
        report.Column("tflops", "TFLOP/s", ".1f"),
        report.Column("peak_used", "peak used"),
        report.Column("mfu", "MFU", ".1%"),
        report.Column("loss", "last loss", ".4f"),
    ]
    return report.finish(record, rows, columns, goals=goals, notes=notes)


def _judge(rows: list[dict], flops: int | None, batch: int, gpu: str | None):
    flops_per_step = None if flops is None else 3 * flops * batch
    by_variant = {row["variant"]: row for row in rows}
    reference = by_variant.get("float32", rows[0])
    fp32_peak = GPU_PEAK_FLOPS.get(gpu_kind(gpu or "") or "", {}).get("fp32")
    for row in rows:
        if "error" in row:
            continue
        row["speedup"] = report.ratio(row.get("images_per_sec"), reference.get("images_per_sec"))
        if flops_per_step:
            row["tflops"] = flops_per_step * row["steps_per_sec"] / 1e12
        if flops_per_step and gpu:
            units, peak = peak_for(row, gpu)
            row["peak_used"] = f"{units} {peak / 1e12:.0f}T" if peak else f"{units} unknown"
            row["mfu"] = report.ratio(row["tflops"] * 1e12, peak)
            row["mfu_vs_fp32_peak"] = report.ratio(row["tflops"] * 1e12, fp32_peak)
    fast = by_variant.get("mixed_float16+xla", {}).get("images_per_sec")
    slow = by_variant.get("float32", {}).get("images_per_sec")
    goals = [report.goal("mixed_float16+xla / float32 images/s", report.ratio(fast, slow), 2.0)]
    notes = []
    if flops_per_step:
        notes.append(
            f"FLOPs per step = 3 x {flops / 1e9:.2f} GFLOP forward per image x batch {batch} "
            f"= {flops_per_step / 1e12:.2f} TFLOP"
        )
    if gpu and gpu_kind(gpu) is None:
        notes.append(f"no peak FLOP/s known for {gpu!r}: MFU not computed")
    notes.append(
        "peaks (dense, TFLOP/s): "
        + "; ".join(
            f"{kind} " + "/".join(f"{u} {p / 1e12:.0f}" for u, p in peaks.items())
            for kind, peaks in GPU_PEAK_FLOPS.items()
        )
    )
    return goals, notes


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
