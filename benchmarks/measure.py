"""What a benchmark's child process measures: wall time of calls, cores busy, memory.

A child (`python -m benchmarks.NAME --child=VARIANT ...`, started by
`benchmarks.runner`) runs one variant, times it with `time_calls` and hands
its figures back with `write_child_result`, which adds the process's peak
resident memory. This module imports no TensorFlow (the input pipeline's
children time plain iterators with it); `benchmarks.harness` is the
TensorFlow side.
"""

import json
import resource
import time
from pathlib import Path

import ml_collections


def proc_field(path: str, name: str) -> str | None:
    """The value of `name: value` in a /proc file such as /proc/self/status; None if absent."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Resident memory of this process now, MiB."""
    value = proc_field("/proc/self/status", "VmRSS")
    return float(value.split()[0]) / 1024 if value else float("nan")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (VmHWM, else ru_maxrss)."""
    value = proc_field("/proc/self/status", "VmHWM")
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


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """The config a child gets in `--config_json` (see `runner.config_for_child`)."""
    return ml_collections.ConfigDict(json.loads(text))


def write_child_result(path: str, result: dict) -> None:
    """Writes a child's result for its parent, adding its peak resident memory."""
    result = {**result, "peak_rss_mib": peak_rss_mib()}
    Path(path).write_text(json.dumps(result, default=json_default))


def json_default(value):
    """`json.dumps`'s `default` for numpy scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
