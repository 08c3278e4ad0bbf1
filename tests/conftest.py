"""Shared pytest fixtures: the data set, the tiny run's settings, runners, one trained workdir.

Tests call the library in-process; subprocesses are kept for command-line
contracts (exit codes, one-line errors, stdout). The work directory that most
tests read (`trained_workdir`) is trained once per session, in-process.
"""

import collections
import fcntl
import json
import os
import subprocess
import sys

import trainer  # noqa: F401  (Keras 2 before TensorFlow loads)
from trainer.data import synthetic

import pytest

from tests.files import one_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The demo config cut to what trains in seconds: 64 px, a narrow decoder, batch 4.
TINY_OVERRIDES = {
    "data.image_size": 64,
    "data.batch_size": 4,
    "model.decoder_filters": (32, 16, 16, 8, 8),
    "train.warmup_steps": 0,
    "train.eval_every": 2,
    "train.log_every": 2,
    "train.steps_per_execution": 2,
}


def _flag_value(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    return str(value)


# The slow files that take longest, longest first. `make test-slow` starts
# files in this order, so that the two demos (15 and 11.5 minutes side by side
# in CI on 2 cores of an AMD EPYC Zen 3) start at once instead of last, when
# one worker would run the final demo alone.
LONGEST_FILES_FIRST = (
    "tests/test_demo_multiclass.py",
    "tests/test_demo.py",
    "tests/test_launch.py",
    "tests/test_benchmarks.py",
)
# Its first tests train the session's shared work directory (`trained_run`):
# started first, it trains on one worker while the other runs files that do
# not need it. Reached by both workers at once, one waited for the other's
# training for 85 s of an 8.5-minute fast suite.
TRAINS_THE_SHARED_RUN = "tests/test_train.py"


def pytest_collection_modifyitems(items):
    """Orders files as the Makefile's `--no-loadscope-reorder` runs start them.

    LONGEST_FILES_FIRST, then TRAINS_THE_SHARED_RUN, then the rest with the
    most collected tests first (as xdist orders files, though it counts only
    the selected ones); tests keep their order in a file.
    """
    tests_per_file = collections.Counter(_file_of(item) for item in items)

    def rank(item):
        path = _file_of(item)
        if path in LONGEST_FILES_FIRST:
            return (0, LONGEST_FILES_FIRST.index(path), path)
        if path == TRAINS_THE_SHARED_RUN:
            return (1, 0, path)
        return (2, -tests_per_file[path], path)

    items.sort(key=rank)


def _file_of(item) -> str:
    return item.nodeid.split("::", 1)[0]


@pytest.fixture(scope="session")
def tiny_args() -> list[str]:
    """The tiny run as trainer.train flags (`--config=configs/demo_cpu.py` and overrides)."""
    overrides = [f"--config.{k}={_flag_value(v)}" for k, v in TINY_OVERRIDES.items()]
    return ["--config=configs/demo_cpu.py", *overrides]


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**overrides)`: a fresh demo config cut to the tiny run, for in-process runs.

    Overrides use `group__field` keywords, e.g. `tiny_config(train__steps=4)`.
    """
    from configs import demo_cpu

    def make(**overrides):
        config = demo_cpu.get_config()
        for key, value in {**TINY_OVERRIDES, **_dotted(overrides)}.items():
            group, field = key.split(".")
            config[group][field] = value
        return config

    return make


def _dotted(overrides: dict) -> dict:
    return {key.replace("__", "."): value for key, value in overrides.items()}


@pytest.fixture(scope="session")
def run_module():
    """`run_module(module, *args, env=None)`: runs `python -m trainer.MODULE` to completion."""

    def run(module, *args, env=None, timeout=600):
        if env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        return subprocess.run(
            [sys.executable, "-m", f"trainer.{module}", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def assert_one_error_line():
    """`check(process, message, returncode=2)`: one `error:` line with `message`, no traceback."""

    def check(process, message, returncode=2):
        assert process.returncode == returncode, process.stderr[-3000:]
        assert "Traceback" not in process.stderr
        lines = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and message in lines[0], process.stderr[-3000:]

    return check


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic data set in the seed's layout: 48 pairs at 64 px, seed 0.

    Session-wide and shared, so tests must not modify it; copy it first.
    """
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_dataset(root, num_images=48, image_size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_root, tiny_config):
    """The tiny run trained in-process: 4 steps, then resumed to 6 on the same workdir.

    Returns `(workdir, first_results, resumed_results)`; shared by every test
    that needs a trained work directory, so tests must not modify it. Under
    `pytest -n N` the first worker to need it trains it; the others wait and
    read it.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _train_tiny_run(tmp_path_factory.mktemp("trained"), synthetic_root, tiny_config)
    # The workers' base folders share a parent that is new for each pytest run.
    shared = tmp_path_factory.getbasetemp().parent / "trained"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        record = shared / "results.json"
        if not record.exists():
            run = _train_tiny_run(shared, synthetic_root, tiny_config)
            record.write_text(json.dumps(run))
        return tuple(json.loads(record.read_text()))


def _train_tiny_run(folder, synthetic_root, tiny_config):
    from trainer import train

    workdir = str(folder / "workdir")
    first = train.train_and_evaluate(
        tiny_config(train__steps=4),
        workdir=workdir,
        data_root=str(synthetic_root),
        strategy=one_device(),
    )
    resumed = train.train_and_evaluate(
        tiny_config(train__steps=6),
        workdir=workdir,
        data_root=str(synthetic_root),
        strategy=one_device(),
    )
    return workdir, first, resumed


@pytest.fixture(scope="session")
def trained_workdir(trained_run) -> str:
    """The work directory of `trained_run` (best weights, checkpoints, export, metrics)."""
    return trained_run[0]
