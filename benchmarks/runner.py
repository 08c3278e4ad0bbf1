"""The parent side of every benchmark: flags, the entry point, child processes, configs, data.

Every benchmark runs each variant in a child process of its own
(`python -m benchmarks.NAME --child=VARIANT ...`), so that a variant's peak
memory, its global TensorFlow state (mixed-precision policy, logical devices)
and its threads cannot leak into another. The parent never imports TensorFlow:
it records the machine and its load (`benchmarks.report`), runs the children
one after the other, and prints and writes their figures with the ratios and
goals (`report.finish`).

A script defines its flags, `run_parent()` (its variants and its verdict,
ending in `report.finish`) and `run_child(variant)` (one variant's
measurement, with `benchmarks.measure` and `benchmarks.harness`), and ends with
`app.run(runner.main(run_parent, run_child, quick=...))`.
"""

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer import cli
from trainer.data import synthetic

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from benchmarks import measure, report

REPO_ROOT = report.REPO_ROOT
DATA_DIR = REPO_ROOT / "benchmarks" / ".data"
_DATA_COMPLETE = "COMPLETE"
_IMAGES_PER_WRITER = 50  # below this, another writer process costs more than it saves

FLAGS = flags.FLAGS


# ---------------------------------------------------------------- flags and entry point


def define_common_flags() -> None:
    """Defines the flags every benchmark takes; call once at the top of a script."""
    flags.DEFINE_bool("quick", False, "Tiny settings that prove the script runs; no figures.")
    flags.DEFINE_integer(
        "wait_quiet_s",
        180,
        "Wait up to this long for the 1-minute load average to fall below "
        f"{report.QUIET_LOAD} before starting (a previous benchmark's load takes ~90 s to decay).",
    )
    flags.DEFINE_string("results_dir", None, "Where NAME.json goes (default benchmarks/results).")
    flags.DEFINE_string(
        "data_dir",
        None,
        "Where photos are cached, scratch folders made (default benchmarks/.data).",
    )
    flags.DEFINE_string("child", None, "Internal: run this one variant and write its result.")
    flags.DEFINE_string("child_result", None, "Internal: the JSON file a child writes.")
    flags.DEFINE_string("config_json", None, "Internal: the resolved config, for a child.")
    flags.DEFINE_string("data", None, "Internal: the synthetic data folder, for a child.")
    flags.DEFINE_string(
        "scratch", None, "Internal: an empty folder the parent removes, for a child."
    )


def define_config_flag(default: str) -> None:
    """Defines `--config=configs/NAME.py` as every entry point does (`trainer.cli`)."""
    cli.define_config_flag(default)


def define_timing_flags(*, warmup_calls: int, calls: int | None = None) -> None:
    """Defines `--warmup_calls` and, unless `calls` is None, `--calls` (train-function calls)."""
    flags.DEFINE_integer(
        "warmup_calls", warmup_calls, "Train-function calls before timing, the first included."
    )
    if calls is not None:
        flags.DEFINE_integer("calls", calls, "Timed train-function calls of steps_per_execution.")


def main(run_parent, run_child, *, quick: dict):
    """The `app.run` main of a benchmark script.

    Args:
        run_parent: `run_parent() -> exit status`: runs the variants (`run_child`,
            `run_rounds`), judges them and returns `report.finish(...)`.
        run_child: `run_child(variant) -> dict`: measures one variant, in the
            child process started with `--child=VARIANT`; TensorFlow's version and
            devices are added to what it returns.
        quick: the script's flags' values under `--quick`, for those not given.
    """

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if FLAGS.child:
            from benchmarks import harness  # TensorFlow: in the children only

            result = {**run_child(FLAGS.child), **harness.devices()}
            measure.write_child_result(FLAGS.child_result, result)
            return 0
        if FLAGS.quick:
            for name, value in {"wait_quiet_s": 0, **quick}.items():
                if not FLAGS[name].present:
                    FLAGS[name].value = value
        return run_parent()

    return run


# ---------------------------------------------------------------- child processes


def probe_gpus() -> list[str]:
    """Names of the GPUs TensorFlow sees, asked in a child process (the parent stays TF-free)."""
    code = "import json; from benchmarks import harness; print(json.dumps(harness.gpu_names()))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"the GPU probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(
    script: str,
    variant: str,
    args: dict,
    *,
    timeout_s: float | None = None,
    scratch: bool = False,
    env: dict | None = None,
) -> dict:
    """Runs one variant in a fresh Python process and returns what it wrote.

    Args:
        script: the benchmark's module name under `benchmarks/`.
        variant: passed as `--child`; the row's label.
        args: more flags, `{name: value}`; a ConfigDict is passed as JSON.
        timeout_s: the child is killed after this long.
        env: environment variables to set in the child, on top of this process's.
        scratch: give the child a new empty folder in `--scratch` (under the
            data folder, on the data's disk), removed once it has exited:
            removing it in the child, whose pipelines still prefetch to the
            end, would make their reads fail.

    Returns:
        The child's result dict plus `variant` and `child_wall_s`; on failure
        `{"variant", "error"}`, the child's last output lines printed.
    """
    print(f"  running {script} {variant} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        if scratch:
            _data_dir().mkdir(parents=True, exist_ok=True)
            folder = cleanup.enter_context(tempfile.TemporaryDirectory(dir=_data_dir()))
            args = {**args, "scratch": folder}
        result_path = Path(tmp) / "result.json"
        command = [
            sys.executable,
            "-m",
            f"benchmarks.{script}",
            f"--child={variant}",
            f"--child_result={result_path}",
            *(f"--{name}={_flag_value(value)}" for name, value in args.items()),
        ]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={**os.environ, **env} if env else None,
            )
        except subprocess.TimeoutExpired:
            print(f"  {variant}: killed after {timeout_s:.0f} s", flush=True)
            return {"variant": variant, "error": f"timed out after {timeout_s:.0f} s"}
        wall_s = time.perf_counter() - started
        if done.returncode or not result_path.exists():
            lines = (done.stdout + done.stderr).strip().splitlines()
            print(f"  {variant}: FAILED (exit {done.returncode}); its last lines:", flush=True)
            print("    " + "\n    ".join(lines[-25:]), flush=True)
            summary = _error_summary(lines)
            return {"variant": variant, "error": f"exit {done.returncode}: {summary}"}
        result = json.loads(result_path.read_text())
    return {"variant": variant, **result, "child_wall_s": wall_s}


def run_rounds(
    script: str, variants: list[str], args: dict, *, rounds: int, key: str, scratch: bool = False
) -> list[dict]:
    """Runs every variant `rounds` times, interleaved (A B C A B C ...).

    Figures from one process to the next vary by several percent on a shared
    machine; interleaving spreads slow spells over all variants, and the
    median damps them.

    Returns:
        One row per variant: the run whose `key` is nearest the median, with
        `key` set to the median and `{key}_runs` listing every run's value.
    """
    runs = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            runs[variant].append(run_child(script, variant, args, scratch=scratch))
    rows = []
    for variant in variants:
        good = [run for run in runs[variant] if run.get(key) is not None]
        if not good:
            rows.append(runs[variant][-1])
            continue
        values = [run[key] for run in good]
        median = statistics.median(values)
        row = dict(min(good, key=lambda run: abs(run[key] - median)))
        row.update({key: median, f"{key}_runs": values})
        rows.append(row)
    return rows


def _error_summary(lines: list[str]) -> str:
    """The child's last exception line, with the line after it when it ends in ':'.

    TensorFlow's errors say 'Graph execution error:' and give the cause below.
    """
    lines = [line.strip() for line in lines if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        if re.match(r"[\w.]*(Error|Exception)\b", lines[index]):
            summary = lines[index]
            if summary.endswith(":") and index + 1 < len(lines):
                summary += " " + lines[index + 1]
            return summary[:400]
    return lines[-1][:400] if lines else "no output"


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_json()
    return str(value)


# ---------------------------------------------------------------- configs and data


def config_for_child(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of the config without downloads, shrunk under `--quick`.

    Encoder weights are never downloaded here: speed does not depend on the
    initial weights, and benchmark machines may have no internet. Pass the
    copy (or copies of it, `.copy_and_resolve_references()`) to `run_child`
    as `config_json`; the child reads it with `measure.config_from_json`.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.encoder_weights = "none"
    if FLAGS.quick:
        config.data.image_size = 64
        config.data.batch_size = 4
        config.model.backbone = "resnet18"
        config.model.decoder_filters = (16, 16, 8, 8, 8)
        config.train.warmup_steps = 0
    return config


def config_settings(config: ml_collections.ConfigDict, *, varied: tuple = ()) -> dict:
    """The settings a train-step benchmark records about its config, less the `varied` ones."""
    settings = {
        "config": config_flags.get_config_filename(FLAGS["config"]),
        "image_size": config.data.image_size,
        "global_batch_size": config.data.batch_size,
        "backbone": config.model.backbone,
        "precision": config.train.precision,
        "steps_per_execution": config.train.steps_per_execution,
    }
    return {name: value for name, value in settings.items() if name not in varied}


def synthetic_data(num_images: int, image_px: int, *, seed: int = 0) -> Path:
    """A cached synthetic data set in the data folder (`--data_dir`), written on first use.

    The set is written in parts (`part0/`, `part1/`, ... each in the seed's
    Images/ + Masks/ layout, each from its own seed) by one process per core,
    since drawing large photos takes a while; `harness.data_frame` reads them
    all. A set interrupted while being written is written again.

    Returns:
        The folder holding the parts.
    """
    root = _data_dir() / f"synthetic_{image_px}px_{num_images}"
    if (root / _DATA_COMPLETE).exists():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    num_parts = max(1, min(os.cpu_count() or 1, num_images // _IMAGES_PER_WRITER))
    counts = [num_images // num_parts + (k < num_images % num_parts) for k in range(num_parts)]
    print(f"  writing {num_images} synthetic {image_px} px photos to {root} ...", flush=True)
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(num_parts) as pool:
        jobs = [
            pool.submit(
                synthetic.write_dataset,
                partial / f"part{k}",
                num_images=count,
                image_size=image_px,
                seed=seed * 1000 + k,
            )
            for k, count in enumerate(counts)
        ]
        written = sum(job.result() for job in jobs)
    (partial / _DATA_COMPLETE).write_text(f"{written} pairs\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    return root


def link_pairs(pairs, folder: Path) -> None:
    """FOLDER/images and FOLDER/masks holding links to the `images` and `masks` of `pairs`."""
    for column in ("images", "masks"):
        (folder / column).mkdir(parents=True)
        for path in pairs[column]:
            (folder / column / Path(path).name).symlink_to(Path(path).resolve())


def real_photo_sets(data_root: str, count: int, phone_size: tuple[int, int]) -> dict[str, Path]:
    """The first `count` pairs of a real data set's train/ split, at their own size and a phone's.

    Neither set copies the user's data into the repository: the own-size set
    links to the original files, and the upscaled one (photos resized to
    `phone_size` (width, height), bicubic, saved as JPEG quality 90 like a
    phone camera; masks nearest-neighbour PNG) is written to the system's temp
    folder, or to `--data_dir` when given.

    Returns:
        `{set name: folder}`, each folder holding one `part0/` in the layout
        `harness.data_frame` reads.
    """
    from trainer.data import layout

    from PIL import Image  # only the real-photo sets need it

    pairs = layout.scan(Path(data_root) / "train").pairs.head(count)
    name = Path(data_root).resolve().name
    base = Path(FLAGS.data_dir).resolve() if FLAGS.data_dir else Path(tempfile.gettempdir())
    base = base / "segmentation-benchmarks"
    width, height = phone_size
    own = base / f"real_{name}_own_{count}"
    phone = base / f"real_{name}_{width}x{height}_{count}"
    for root in (own, phone):
        if (root / _DATA_COMPLETE).exists():
            continue
        shutil.rmtree(root, ignore_errors=True)
        print(f"  writing {count} photos of {name} to {root} ...", flush=True)
        if root == own:
            link_pairs(pairs, root / "part0")
        else:
            for column in ("images", "masks"):
                (root / "part0" / column).mkdir(parents=True)
            for image_path, mask_path in zip(pairs["images"], pairs["masks"]):
                image_to = root / "part0" / "images" / (Path(image_path).stem + ".jpg")
                mask_to = root / "part0" / "masks" / (Path(mask_path).stem + ".png")
                with Image.open(image_path) as photo:
                    photo.convert("RGB").resize(phone_size, Image.BICUBIC).save(
                        image_to, quality=90
                    )
                with Image.open(mask_path) as mask:
                    mask.convert("L").resize(phone_size, Image.NEAREST).save(mask_to)
        (root / _DATA_COMPLETE).write_text(f"{len(pairs)} pairs\n")
    return {f"{name}, own size": own, f"{name}, {width}x{height}": phone}


def _data_dir() -> Path:
    return Path(FLAGS.data_dir).resolve() if FLAGS.data_dir else DATA_DIR
