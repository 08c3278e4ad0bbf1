"""Makes the tf.distribute strategy named by `--strategy`.

one_device             one GPU if there is one, else the CPU (debugging)
mirrored               every local GPU (or the logical CPUs of --num_cpu_devices)
multi_worker_mirrored  several machines; the cluster comes from TF_CONFIG
tpu                    a Cloud TPU (--tpu=NAME, or 'local' on a single-host TPU VM)

A multi-host TPU slice (a pod slice: v4-32, v5litepod-16, ...) is driven by one
client process, on its worker 0, with --tpu=NAME (the slice's name): the
resolver finds every host of the slice, and `distribute_datasets_from_function`
calls the input function once per host, each host reading its own shard.
"""

import json
import os
import re

from trainer.errors import UserError

import tensorflow as tf
from absl import logging

STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored", "tpu")

# TensorFlow's coordination service declares a worker dead after 10 s without a
# heartbeat, and then fails the whole job. A busy host (several workers sharing
# a few cores, a long SavedModel export) can miss that though every worker is
# alive, and a healthy job is lost. The same timeout is also how long the
# others take to notice a worker that was killed or whose machine vanished
# (measured: kill -9 of a local worker is noticed after this timeout, not
# sooner); a minute is cheap against a training job. XLA's own distributed
# client waits 100 s.
HEARTBEAT_TIMEOUT_S = 60


def configure_cpu_devices(num_cpu_devices: int) -> None:
    """Splits the host CPU into N logical devices; call before TensorFlow runs any op.

    This lets MirroredStrategy run (and be tested) on a machine without GPUs.
    """
    if num_cpu_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices
    )


def _compute_devices() -> list[str]:
    """Names of local devices to replicate over: GPUs if any, else logical CPUs."""
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def _check_tf_config() -> None:
    """Raises UserError unless TF_CONFIG describes a cluster this process belongs to."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError(
            "--strategy=multi_worker_mirrored needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}); launch/ generates it'
        )
    try:
        tf_config = json.loads(raw)
        workers = tf_config["cluster"]["worker"]
        task = tf_config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"TF_CONFIG is malformed ({type(error).__name__}: {error}); it needs "
            "cluster.worker (a list of host:port) and task.type/task.index"
        ) from None
    num_tasks = len(workers) if task.get("type") == "worker" else 1
    if task.get("type") not in ("worker", "chief") or not 0 <= index < num_tasks:
        raise UserError(f"TF_CONFIG task {task} is not a worker of the cluster {workers}")


def make_strategy(name: str, *, tpu: str | None = None) -> tf.distribute.Strategy:
    """Creates the strategy; raises UserError for an unusable name or setup.

    Args:
        name: one of STRATEGIES.
        tpu: TPU name or address for `tpu` ('local' on a TPU VM).
    """
    if name not in STRATEGIES:
        raise UserError(f"--strategy={name!r} is unknown; choose one of {', '.join(STRATEGIES)}")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(_compute_devices()[0])
    if name == "mirrored":
        devices = _compute_devices()
        if len(devices) < 2:
            raise UserError(
                f"--strategy=mirrored found one device ({devices[0]}); use "
                "--strategy=one_device, or --num_cpu_devices=N to split the CPU for a test"
            )
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        _check_tf_config()
        _configure_coordination_service()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _make_tpu_strategy(tpu)


def _configure_coordination_service() -> None:
    """Sets up the cluster's coordination service as the strategy would, with our heartbeat.

    MultiWorkerMirroredStrategy configures the service itself only when nothing
    has, with TensorFlow's 10 s heartbeat timeout; no public API changes that
    timeout, hence the private calls (the same ones the strategy makes).
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster_spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
        for job in ("chief", "worker")
        if job in cluster_spec.jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_S * 1000,
    )


def _make_tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    # The resolver fails in many ways: metadata server unreachable (URLError),
    # unknown name (ValueError), no TPU kernels on this host (NotFoundError).
    except Exception as error:  # noqa: BLE001
        raise UserError(
            f"--strategy=tpu could not reach the TPU {tpu or 'local'!r} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); run on a TPU VM "
            "with --tpu=local, or on a multi-host slice's worker 0 with --tpu=NAME"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one process that writes logs, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


def describe(strategy: tf.distribute.Strategy) -> None:
    """Logs the strategy and its replicas."""
    logging.info(
        "Strategy %s with %d replica(s) in sync; local devices: %s",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        ", ".join(
            d.name for d in tf.config.list_logical_devices() if d.device_type != "TPU_SYSTEM"
        ),
    )


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together: the cluster's workers under multi-worker, else 1.

    (A TPU strategy drives all its hosts from this one process.)
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", ())) + len(cluster.get("chief", ())))


def input_shard(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """`(input_pipeline_id, num_input_pipelines)` of this process's input pipeline.

    The numbering `distribute_datasets_from_function` gives the pipelines: one
    per worker under multi-worker (the chief first), one otherwise. A TPU
    strategy on a multi-host slice drives all its hosts from this one process,
    which builds every host's pipeline (ids 0 to hosts - 1): `(0, 1)` then
    means that what this process prepares must cover every shard. Lets work
    for this process's shards (the data cache) be done before the datasets are made.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    resolver = strategy.cluster_resolver
    num_chiefs = len(resolver.cluster_spec().as_dict().get("chief", ()))
    pipeline_id = 0 if resolver.task_type == "chief" else resolver.task_id + num_chiefs
    return pipeline_id, num_workers(strategy)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The `--strategy` name of a strategy object (its class name when it has none)."""
    for name, kind in (
        ("multi_worker_mirrored", tf.distribute.MultiWorkerMirroredStrategy),
        ("tpu", tf.distribute.TPUStrategy),
        ("mirrored", tf.distribute.MirroredStrategy),
        ("one_device", tf.distribute.OneDeviceStrategy),
    ):
        if isinstance(strategy, kind):
            return name
    return type(strategy).__name__


def make_any_worker_fn(strategy: tf.distribute.Strategy):
    """A function `flag -> bool`: True when `flag` is True on any worker.

    Every worker must call it at the same point: on several workers it is a
    collective (a sum over all replicas). A stop request (SIGTERM) reaches one
    worker at a time (one preempted VM, one evicted pod); if that worker alone
    left the loop, the others would wait in the next step's all-reduce while
    it waited in the checkpoint's. Agreeing first, all of them stop after the
    same step and save the same checkpoint. One process needs no agreement.
    """
    if num_workers(strategy) == 1:
        return bool

    @tf.function
    def count(flag):
        per_replica = strategy.run(lambda: tf.cast(flag, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return lambda flag: int(count(tf.constant(bool(flag)))) > 0


# A task named in a collective's error: "... remote target /job:worker/replica:0/task:1 ...".
_REMOTE_TASK = re.compile(r"(?:remote target |task )?/job:(\w+)/replica:\d+/task:(\d+)")
_GRPC_MESSAGE = re.compile(r'grpc_message:"([^"]+)"')
# The line of a long error that says what happened (the coordination service's
# heartbeat verdict, a reset connection), rather than "Graph execution error:".
_SYMPTOM = re.compile(r"unhealthy|heartbeat|reset by peer|Socket closed|failed to connect", re.I)


def lost_peer_summary(error: BaseException) -> str:
    """One phrase for a collective that failed because a peer is gone.

    Names the worker when TensorFlow's error says which one (its gRPC details
    name the remote task), and the transport's reason when it gives one.
    """
    message = getattr(error, "message", None) or str(error)
    remote = [m for m in _REMOTE_TASK.finditer(message) if "remote target" in m.group(0)]
    tasks = remote or list(_REMOTE_TASK.finditer(message))
    who = f"{tasks[0].group(1)} {tasks[0].group(2)}" if tasks else "another worker"
    reason = _GRPC_MESSAGE.search(message)
    telling = [line.strip() for line in message.splitlines() if _SYMPTOM.search(line)]
    if reason:
        detail = reason.group(1)
    elif telling:
        detail = telling[0]
    else:
        detail = message.strip().splitlines()[0]
    return f"lost contact with {who} ({type(error).__name__}: {detail[:200]})"
