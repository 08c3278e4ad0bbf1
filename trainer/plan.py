"""The run plan: step counts derived from the config, the data and the strategy.

Derived once at start and saved in config.json, so that configs hold only
what the user chose (no device queries in config files).
"""

from trainer.errors import UserError

import ml_collections
from absl import logging


def run_plan(config: ml_collections.ConfigDict, num_train: int, num_replicas: int) -> dict:
    """Derives the step counts of the run from the config and the data size."""
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
    }


TPU_STEPS_PER_EXECUTION = 50


def adapt_to_tpu(config: ml_collections.ConfigDict) -> None:
    """TPU defaults: bfloat16 instead of float16, several steps per host call."""
    if config.train.precision == "mixed_float16":
        logging.info("TPU: using mixed_bfloat16 (TPUs compute in bfloat16, no loss scaling)")
        config.train.precision = "mixed_bfloat16"
    if config.train.steps_per_execution == 1:
        logging.info(
            "TPU: %d steps per execution, so that the host loop keeps the TPU busy",
            TPU_STEPS_PER_EXECUTION,
        )
        config.train.steps_per_execution = TPU_STEPS_PER_EXECUTION


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
