"""Runs N workers of the trainer on this machine with MultiWorkerMirroredStrategy.

    python -m launch.multi_worker_local --num_workers=2 -- \
        --config=configs/demo_cpu.py --data_root=data/synthetic --workdir=runs/mw

Each worker is `python -m trainer.train ARGS --strategy=multi_worker_mirrored`
with its own TF_CONFIG on 127.0.0.1 and a free port. The same code path as a
real cluster (collective all-reduce over gRPC, a chief that writes, workers
that save to temporary directories) runs here on one box, so it can be tested
without a cluster. Worker logs are streamed with a `[worker i]` prefix. If one
worker fails the others are stopped (they would wait forever in a collective
otherwise) and the launcher exits with that worker's status.

On a GPU machine, `--gpus_per_worker=K` gives worker i the GPUs i*K..i*K+K-1;
without it every worker sees every GPU, which suits CPU-only tests only.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds a worker gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_S = 10.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Returns `count` distinct ports that were free on `host` a moment ago.

    All sockets stay bound until every port is picked, so no port repeats; a
    port can still be taken by another program before the worker binds it,
    which is rare enough on a test machine.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def tf_configs(addresses: list[str]) -> list[dict]:
    """The TF_CONFIG of each worker of a cluster of `addresses` (host:port); worker 0 is chief."""
    return [
        {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}
        for index in range(len(addresses))
    ]


def worker_command(
    trainer_args: list[str], *, python: str = sys.executable, module: str = "trainer.train"
) -> list[str]:
    """The trainer command line, with --strategy=multi_worker_mirrored unless one is given."""
    args = list(trainer_args)
    if not any(a.startswith("--strategy") for a in args):
        args.append("--strategy=multi_worker_mirrored")
    return [python, "-m", module, *args]


def worker_env(tf_config: dict, index: int, gpus_per_worker: int | None) -> dict:
    """The environment of worker `index`: ours, plus TF_CONFIG and its GPU slice."""
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps(tf_config)
    # The trainer is importable from any working directory, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    # Unbuffered, so that the interleaved logs of the workers arrive in time order.
    env["PYTHONUNBUFFERED"] = "1"
    if gpus_per_worker is not None:
        first = index * gpus_per_worker
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(g) for g in range(first, first + gpus_per_worker)
        )
    return env


def _stream(process: subprocess.Popen, prefix: str, log_file) -> None:
    for line in process.stdout:
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()
        if log_file is not None:
            log_file.write(line)
            log_file.flush()


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to every running worker, SIGKILL to those still running after the grace."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        if process.poll() is None:
            process.kill()
            process.wait()


def run_workers(
    trainer_args: list[str],
    *,
    num_workers: int,
    host: str = "127.0.0.1",
    gpus_per_worker: int | None = None,
    log_dir: str | None = None,
    timeout_s: float | None = None,
    cwd: str | None = None,
    module: str = "trainer.train",
) -> int:
    """Starts the workers, streams their logs and waits; returns 0 or a failed worker's status.

    Args:
        trainer_args: flags of trainer.train (--config, --data_root, --workdir, ...).
        num_workers: number of worker processes.
        host: address the workers listen on.
        gpus_per_worker: GPUs given to each worker via CUDA_VISIBLE_DEVICES; None = all.
        log_dir: if set, worker i's output is also written to LOG_DIR/worker_i.log.
        timeout_s: stop every worker and return 124 after this many seconds.
        cwd: working directory of the workers (relative paths in the args); default ours.
        module: the Python module each worker runs.
    """
    if num_workers < 1:
        raise ValueError(f"--num_workers={num_workers} must be at least 1")
    addresses = [f"{host}:{port}" for port in free_ports(num_workers, host)]
    command = worker_command(trainer_args, module=module)
    print(f"[launcher] {num_workers} workers at {', '.join(addresses)}: {' '.join(command)}")
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)

    processes, threads, log_files = [], [], []
    started = time.monotonic()
    try:
        for index, tf_config in enumerate(tf_configs(addresses)):
            log_file = None
            if log_dir:
                log_file = open(os.path.join(log_dir, f"worker_{index}.log"), "w")
                log_files.append(log_file)
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=worker_env(tf_config, index, gpus_per_worker),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            processes.append(process)
            thread = threading.Thread(
                target=_stream, args=(process, f"[worker {index}]", log_file), daemon=True
            )
            thread.start()
            threads.append(thread)

        status = _wait(processes, started, timeout_s)
    except KeyboardInterrupt:
        status = 130
    finally:
        _stop(processes)
        for thread in threads:
            thread.join(timeout=5)
        for log_file in log_files:
            log_file.close()
    elapsed = time.monotonic() - started
    print(f"[launcher] {'done' if status == 0 else f'failed ({status})'} in {elapsed:.1f} s")
    return status


def _wait(processes, started, timeout_s) -> int:
    """Waits for all workers; returns at the first failure, 0 when all succeeded."""
    while True:
        codes = [p.poll() for p in processes]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                print(f"[launcher] worker {index} exited with {code}; stopping the others")
                return code if code > 0 else 128 - code
        if all(code == 0 for code in codes):
            return 0
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            print(f"[launcher] timed out after {timeout_s:.0f} s; stopping the workers")
            return 124
        time.sleep(0.2)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [--num_workers=N] [options] -- TRAINER_FLAGS...",
    )
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1", help="address the workers listen on")
    parser.add_argument(
        "--gpus_per_worker", type=int, default=None, help="CUDA_VISIBLE_DEVICES slice per worker"
    )
    parser.add_argument("--log_dir", default=None, help="also write LOG_DIR/worker_i.log")
    parser.add_argument("--timeout_s", type=float, default=None, help="give up after this long")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="flags of trainer.train")
    args = parser.parse_args(argv)
    trainer_args = args.trainer_args
    if trainer_args and trainer_args[0] == "--":
        trainer_args = trainer_args[1:]
    if not trainer_args:
        parser.error("pass the trainer's flags after --, e.g. -- --config=... --workdir=...")

    # A SIGTERM to the launcher (a job scheduler's stop) stops the workers too.
    signal.signal(signal.SIGTERM, _interrupt)
    return run_workers(
        trainer_args,
        num_workers=args.num_workers,
        host=args.host,
        gpus_per_worker=args.gpus_per_worker,
        log_dir=args.log_dir,
        timeout_s=args.timeout_s,
    )


if __name__ == "__main__":
    sys.exit(main())
