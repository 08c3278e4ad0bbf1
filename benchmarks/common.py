"""What the benchmarks share: flags, the machine, child processes, timing, memory, results.

Every benchmark runs each variant in a child process of its own
(`python -m benchmarks.NAME --child=VARIANT ...`), so that a variant's peak
memory, its global TensorFlow state (mixed-precision policy, logical devices)
and its threads cannot leak into another. The parent never imports TensorFlow:
it records the machine and the load average before and after, runs the
children one after the other, prints a table with the ratios and goals, and
writes `benchmarks/results/NAME.json` (`NAME.quick.json` for `--quick` runs,
which prove that a script runs and measure nothing).

This module imports no TensorFlow; `benchmarks.harness` is the children's side.
"""

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.data import synthetic

import ml_collections
from absl import flags

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
DATA_DIR = BENCHMARKS_DIR / ".data"
# A 1-minute load average above this means other programs share the cores:
# throughput figures taken then are void.
QUIET_LOAD = 0.5
_DATA_COMPLETE = "COMPLETE"
_IMAGES_PER_WRITER = 50  # below this, another writer process costs more than it saves


def define_common_flags() -> None:
    """Defines the flags every benchmark takes; call once at the top of a script."""
    flags.DEFINE_bool("quick", False, "Tiny settings that prove the script runs; no figures.")
    flags.DEFINE_string("child", None, "Internal: run this one variant and write its result.")
    flags.DEFINE_string("child_result", None, "Internal: the JSON file a child writes.")
    flags.DEFINE_string("config_json", None, "Internal: the resolved config, for a child.")
    flags.DEFINE_integer(
        "wait_quiet_s",
        180,
        "Wait up to this long for the 1-minute load average to fall below "
        f"{QUIET_LOAD} before starting (a previous benchmark's load takes ~90 s to decay).",
    )


def use_quick_settings(flag_values: flags.FlagValues, quick_values: dict) -> None:
    """With --quick, gives the flags not set on the command line their tiny values."""
    if not flag_values.quick:
        return
    for name, value in {"wait_quiet_s": 0, **quick_values}.items():
        if not flag_values[name].present:
            flag_values[name].value = value


# ---------------------------------------------------------------- machine


def load_average() -> dict:
    """The load averages (1, 5, 15 minutes) and `uptime`'s own line."""
    one, five, fifteen = os.getloadavg()
    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        line = ""
    return {"1min": one, "5min": five, "15min": fifteen, "uptime": line.strip()}


def wait_for_quiet(max_wait_s: float) -> None:
    """Waits until the 1-minute load average is at most QUIET_LOAD, or max_wait_s passed."""
    deadline = time.monotonic() + max_wait_s
    if os.getloadavg()[0] > QUIET_LOAD and max_wait_s > 0:
        print(
            f"waiting up to {max_wait_s:.0f} s for the load average ({os.getloadavg()[0]:.2f}) "
            f"to fall below {QUIET_LOAD} ...",
            flush=True,
        )
    while os.getloadavg()[0] > QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(5)


def machine() -> dict:
    """The host: CPU count and model, memory, Python and OS."""
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "memory_gib": round(_memory_total_kib() / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _memory_total_kib() -> float:
    value = _proc_field("/proc/meminfo", "MemTotal")
    return float(value.split()[0]) if value else 0.0


# ---------------------------------------------------------------- memory and time


def rss_mib() -> float:
    """Resident memory of this process now, MiB."""
    value = _proc_field("/proc/self/status", "VmRSS")
    return float(value.split()[0]) / 1024 if value else float("nan")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (VmHWM, else ru_maxrss)."""
    value = _proc_field("/proc/self/status", "VmHWM")
    if value:
        return float(value.split()[0]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads, seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_calls(call, *, warmup_calls: int, timed_calls: int) -> dict:
    """Times `call()` after warm-up; `call` returns how many items it processed.

    Returns:
        `items`, `seconds` (wall, timed calls only), `items_per_sec`,
        `seconds_per_call` (list) and `cores_busy` (CPU seconds of the whole
        process per wall second: 2.0 means two cores fully used).
    """
    for _ in range(warmup_calls):
        call()
    items, per_call = 0, []
    cpu_start, start = cpu_seconds(), time.perf_counter()
    for _ in range(timed_calls):
        call_start = time.perf_counter()
        items += call()
        per_call.append(time.perf_counter() - call_start)
    seconds = time.perf_counter() - start
    return {
        "items": items,
        "seconds": seconds,
        "items_per_sec": items / seconds if seconds else float("nan"),
        "seconds_per_call": per_call,
        "cores_busy": (cpu_seconds() - cpu_start) / seconds if seconds else float("nan"),
    }


# ---------------------------------------------------------------- child processes


def run_child(
    script: str,
    variant: str,
    args: dict,
    *,
    timeout_s: float | None = None,
    scratch_flag: str | None = None,
) -> dict:
    """Runs one variant in a fresh Python process and returns what it wrote.

    Args:
        script: the benchmark's module name under `benchmarks/`.
        variant: passed as `--child`; the row's label.
        args: more flags, `{name: value}`.
        timeout_s: the child is killed after this long.
        scratch_flag: if set, the child gets a new empty folder (under
            benchmarks/.data/, on the data's disk) in this flag, removed once
            it has exited: removing it in the child, whose pipelines still
            prefetch to the end, would make their reads fail.

    Returns:
        The child's result dict plus `variant` and `child_wall_s`; on failure
        `{"variant", "error"}`, the child's last output lines printed.
    """
    print(f"  running {script} {variant} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        if scratch_flag:
            DATA_DIR.mkdir(parents=True, exist_ok=True)
            scratch = cleanup.enter_context(tempfile.TemporaryDirectory(dir=DATA_DIR))
            args = {**args, scratch_flag: scratch}
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
                command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
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
    script: str,
    variants: list[str],
    args: dict,
    *,
    rounds: int,
    key: str,
    scratch_flag: str | None = None,
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
            runs[variant].append(run_child(script, variant, args, scratch_flag=scratch_flag))
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
    return str(value)


def write_child_result(path: str, result: dict) -> None:
    """Writes a child's result, adding its peak resident memory."""
    result = {**result, "peak_rss_mib": peak_rss_mib()}
    Path(path).write_text(json.dumps(result, default=_json_default))


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def probe_gpus() -> list[str]:
    """Names of the GPUs TensorFlow sees, asked in a child process (the parent stays TF-free)."""
    code = (
        "import json, trainer, tensorflow as tf; "
        "gpus = tf.config.list_physical_devices('GPU'); "
        "print(json.dumps([tf.config.experimental.get_device_details(g).get('device_name', "
        "g.name) for g in gpus]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"the GPU probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- configs and data


def config_for_child(config: ml_collections.ConfigDict, *, quick: bool) -> str:
    """The config as JSON for a child, without downloads and shrunk for `--quick`.

    Encoder weights are never downloaded here: speed does not depend on the
    initial weights, and benchmark machines may have no internet.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.encoder_weights = "none"
    if quick:
        config.data.image_size = 64
        config.data.batch_size = 4
        config.model.backbone = "resnet18"
        config.model.decoder_filters = (16, 16, 8, 8, 8)
        config.train.warmup_steps = 0
    return config.to_json()


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """The child's side of `config_for_child`."""
    return ml_collections.ConfigDict(json.loads(text))


def synthetic_data(num_images: int, image_px: int, *, seed: int = 0) -> Path:
    """A cached synthetic data set under benchmarks/.data/, written on first use.

    The set is written in parts (`part0/`, `part1/`, ... each in the seed's
    Images/ + Masks/ layout, each from its own seed) by one process per core,
    since drawing large photos takes a while; `harness.data_frame` reads them
    all. A set interrupted while being written is written again.

    Returns:
        The folder holding the parts.
    """
    root = DATA_DIR / f"synthetic_{image_px}px_{num_images}"
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


# ---------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: the row key, its header and a format spec; '-' when missing."""

    key: str
    header: str
    fmt: str = ""

    def cell(self, row: dict) -> str:
        value = row.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, list):
            return " ".join(format(item, self.fmt) for item in value)
        return format(value, self.fmt)


# Columns every timing child reports (time_calls, harness.time_training, write_child_result).
CORES_BUSY = Column("cores_busy", "cores busy", ".2f")
FIRST_CALL_S = Column("first_call_s", "first call s", ".1f")
PEAK_RSS_MIB = Column("peak_rss_mib", "peak RSS MiB", ".0f")


def goal(name: str, value: float | None, target: float, *, at_most: bool = False) -> dict:
    """A goal of the issue: `value >= target` (or `<=` with `at_most`)."""
    met = value is not None and (value <= target if at_most else value >= target)
    return {"name": name, "value": value, "target": target, "at_most": at_most, "met": met}


def start(name: str, title: str, settings: dict, flag_values: flags.FlagValues) -> dict:
    """Waits for a quiet machine, prints the header (machine, load), returns the run's record.

    Args:
        name: the benchmark's name, which names its results file.
        title: what it compares, one line.
        settings: what the run measured with, recorded in the results.
        flag_values: the parsed flags, for the common ones (`--quick`, `--wait_quiet_s`).
    """
    quick = flag_values.quick
    print(f"== {name}: {title}", flush=True)
    wait_started = time.monotonic()
    wait_for_quiet(flag_values.wait_quiet_s)
    waited_s = time.monotonic() - wait_started
    load = load_average()
    record = {
        "benchmark": name,
        "title": title,
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "machine": machine(),
        "load_before": load,
        "waited_for_quiet_s": round(waited_s, 1),
        "void": load["1min"] > QUIET_LOAD,
    }
    info = record["machine"]
    print(f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB")
    print(f"load before: {load['uptime'] or load['1min']}")
    if record["void"]:
        print(
            f"WARNING: the load average before the run is {load['1min']:.2f} (> {QUIET_LOAD}): "
            "other programs share the CPU, so these figures are VOID; rerun on a quiet machine."
        )
    if quick:
        print("QUICK RUN: tiny settings that prove the script runs; these are not figures.")
    print(f"settings: {json.dumps(settings)}", flush=True)
    return record


def finish(
    record: dict,
    rows: list[dict],
    columns: list[Column],
    *,
    goals: list[dict] = (),
    notes: list[str] = (),
) -> int:
    """Prints the table, goals and notes, writes the JSON; returns the exit status.

    The status is 1 when a variant failed, 0 otherwise (an unmet goal is a
    result, not a failure).
    """
    record["load_after"] = load_average()
    record.update(rows=rows, goals=list(goals), notes=list(notes))
    print()
    print(format_table(rows, columns))
    for row in rows:
        if "error" in row:
            print(f"FAILED {row['variant']}: {row['error']}")
    for g in goals:
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        sign = "<=" if g["at_most"] else ">="
        verdict = "met" if g["met"] else "NOT MET"
        print(f"GOAL {g['name']} {sign} {g['target']:g}: {value}  {verdict}")
    for note in notes:
        print(f"note: {note}")
    # The load just after includes this benchmark's own work: recorded, not judged.
    print(f"load after (includes this benchmark's own): {record['load_after']['uptime']}")
    if record["void"]:
        print("WARNING: the machine was busy before the run; these figures are VOID.")
    path = RESULTS_DIR / f"{record['benchmark']}{'.quick' if record['quick'] else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    print(f"results: {path.relative_to(REPO_ROOT)}", flush=True)
    return 1 if any("error" in row for row in rows) else 0


def format_table(rows: list[dict], columns: list[Column]) -> str:
    """A plain-text table, one line per row."""
    cells = [[c.header for c in columns]] + [[c.cell(row) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
