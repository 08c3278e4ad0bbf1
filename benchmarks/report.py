"""The parent's record of a benchmark run: the machine, its load, the table, goals, results.

`start` waits for a quiet machine and records it with the run's settings;
`finish` prints the table of the variants' rows with the goals (`GOAL ...`
lines), the headline ratios of benchmarks without a goal (`RATIO ...`) and
notes, and writes the record to `benchmarks/results/NAME.json`
(`NAME.quick.json` for `--quick` runs; `--results_dir` writes elsewhere).
Like `benchmarks.runner`, it imports no TensorFlow.
"""

import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

from absl import flags

from benchmarks import measure

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# A 1-minute load average above this means other programs share the cores:
# throughput figures taken then are void.
QUIET_LOAD = 0.5

FLAGS = flags.FLAGS


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
    memory_kib = measure.proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": measure.proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "memory_gib": round(float(memory_kib.split()[0]) / 2**20 if memory_kib else 0.0, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: the row key, its header and a format spec; '-' when missing."""

    key: str
    header: str
    fmt: str = ""

    def cell(self, row: dict) -> str:
        """The row's value formatted for the table."""
        value = row.get(self.key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, list):
            return " ".join(format(item, self.fmt) for item in value)
        return format(value, self.fmt)


# Columns every timing child reports (measure.time_calls, harness.time_training,
# measure.write_child_result).
CORES_BUSY = Column("cores_busy", "cores busy", ".2f")
FIRST_CALL_S = Column("first_call_s", "first call s", ".1f")
PEAK_RSS_MIB = Column("peak_rss_mib", "peak RSS MiB", ".0f")
IMAGES_PER_SEC = Column("images_per_sec", "images/s", ".1f")


def goal(name: str, value: float | None, target: float, *, at_most: bool = False) -> dict:
    """A goal of the benchmark: `value >= target` (or `<=` with `at_most`)."""
    met = value is not None and (value <= target if at_most else value >= target)
    return {"name": name, "value": value, "target": target, "at_most": at_most, "met": met}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def start(name: str, title: str, settings: dict) -> dict:
    """Waits for a quiet machine, prints the header (machine, load), returns the run's record.

    Args:
        name: the benchmark's name, which names its results file.
        title: what it compares, one line.
        settings: what the run measured with, recorded in the results.
    """
    print(f"== {name}: {title}", flush=True)
    wait_started = time.monotonic()
    wait_for_quiet(FLAGS.wait_quiet_s)
    waited_s = time.monotonic() - wait_started
    load = load_average()
    record = {
        "benchmark": name,
        "title": title,
        "quick": FLAGS.quick,
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
    if FLAGS.quick:
        print("QUICK RUN: tiny settings that prove the script runs; these are not figures.")
    print(f"settings: {json.dumps(settings)}", flush=True)
    return record


def finish(
    record: dict,
    rows: list[dict],
    columns: list[Column],
    *,
    goals: list[dict] = (),
    ratios: dict[str, float | None] | None = None,
    notes: list[str] = (),
) -> int:
    """Prints the table, goals, ratios and notes, writes the JSON; returns the exit status.

    Every goal prints a `GOAL name >= target: value` line and every entry of
    `ratios` (the headline of a benchmark without a goal, already in its rows)
    a `RATIO name: value` line. The status is 1 when a variant failed, 0
    otherwise (an unmet goal is a result, not a failure).
    """
    record["load_after"] = load_average()
    record.update(rows=rows, goals=list(goals), notes=list(notes))
    print()
    print(format_table(rows, columns))
    for row in rows:
        if "error" in row:
            print(f"FAILED {row['variant']}: {row['error']}")
    for g in goals:
        sign = "<=" if g["at_most"] else ">="
        verdict = "met" if g["met"] else "NOT MET"
        print(f"GOAL {g['name']} {sign} {g['target']:g}: {_figure(g['value'])}  {verdict}")
    for name, value in (ratios or {}).items():
        print(f"RATIO {name}: {_figure(value)}")
    for note in notes:
        print(f"note: {note}")
    # The load just after includes this benchmark's own work: recorded, not judged.
    print(f"load after (includes this benchmark's own): {record['load_after']['uptime']}")
    if record["void"]:
        print("WARNING: the machine was busy before the run; these figures are VOID.")
    results_dir = Path(FLAGS.results_dir).resolve() if FLAGS.results_dir else RESULTS_DIR
    path = results_dir / f"{record['benchmark']}{'.quick' if record['quick'] else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=measure.json_default) + "\n")
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    print(f"results: {shown}", flush=True)
    return 1 if any("error" in row for row in rows) else 0


def format_table(rows: list[dict], columns: list[Column]) -> str:
    """A plain-text table, one line per row."""
    cells = [[c.header for c in columns]] + [[c.cell(row) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
