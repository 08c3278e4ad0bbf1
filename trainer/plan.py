"""The run plan: step counts derived from the config, the data and the strategy.

Derived once at start and saved in config.json, so that configs hold only
what the user chose (no device queries in config files).
"""

from trainer.errors import UserError

import ml_collections
from absl import logging


def run_plan(
    config: ml_collections.ConfigDict, num_train: int, num_replicas: int, *, on_tpu: bool = False
) -> dict:
    """Derives the step counts, precision and steps per call from the config and the data.

    On a TPU the config's float16 becomes bfloat16 (TPUs compute in bfloat16, no
    loss scaling) and one step per call becomes several, so that the host loop
    keeps the TPU busy; explicit choices stay. The config itself is not changed.
    """
    global_batch_size = config.data.batch_size
    if global_batch_size % num_replicas:
        raise UserError(
            f"--config.data.batch_size={global_batch_size} does not divide over "
            f"{num_replicas} replicas; use a multiple of {num_replicas}"
        )
    steps_per_epoch = max(1, num_train // global_batch_size)
    total_steps = config.train.steps or config.train.epochs * steps_per_epoch
    if total_steps <= 0:
        raise UserError("set --config.train.steps or --config.train.epochs to a positive number")
    eval_every = config.train.eval_every or steps_per_epoch
    return {
        "num_replicas": num_replicas,
        "global_batch_size": global_batch_size,
        "per_replica_batch_size": global_batch_size // num_replicas,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "eval_every": eval_every,
        "checkpoint_every": config.train.checkpoint_every or eval_every,
        "log_every": config.train.log_every or eval_every,
        **_device_defaults(config, on_tpu=on_tpu),
    }


TPU_STEPS_PER_EXECUTION = 50


def _device_defaults(config: ml_collections.ConfigDict, *, on_tpu: bool) -> dict:
    precision = config.train.precision
    steps_per_execution = config.train.steps_per_execution
    if on_tpu and precision == "mixed_float16":
        logging.info("TPU: using mixed_bfloat16 (TPUs compute in bfloat16, no loss scaling)")
        precision = "mixed_bfloat16"
    if on_tpu and steps_per_execution == 1:
        logging.info(
            "TPU: %d steps per execution, so that the host loop keeps the TPU busy",
            TPU_STEPS_PER_EXECUTION,
        )
        steps_per_execution = TPU_STEPS_PER_EXECUTION
    return {"precision": precision, "steps_per_execution": steps_per_execution}


def steps_until_event(step: int, plan: dict, steps_per_execution: int) -> int:
    """Steps to run in the next call: up to steps_per_execution, stopping at any event."""
    boundaries = [plan["total_steps"]]
    for key in ("eval_every", "checkpoint_every", "log_every"):
        every = plan[key]
        boundaries.append((step // every + 1) * every)
    return max(1, min(min(boundaries) - step, steps_per_execution))


def is_due(step: int, every: int, total_steps: int) -> bool:
    """True at multiples of `every` and at the last step."""
    return step % every == 0 or step == total_steps
