"""The run plan: steps from epochs, event boundaries, TPU defaults, bad batch sizes."""

from trainer import plan as plan_lib
from trainer.errors import UserError

import pytest

from configs import demo_cpu, nail_unet_effb4


def test_epochs_become_steps_of_the_global_batch():
    config = nail_unet_effb4.get_config()  # 100 epochs, global batch 32
    plan = plan_lib.run_plan(config, num_train=1000, num_replicas=8)
    assert plan["steps_per_epoch"] == 31 and plan["total_steps"] == 3100
    assert plan["per_replica_batch_size"] == 4
    assert plan["eval_every"] == 31 and plan["checkpoint_every"] == 31


def test_steps_override_epochs():
    config = demo_cpu.get_config()
    assert plan_lib.run_plan(config, num_train=320, num_replicas=1)["total_steps"] == 600


def test_batch_not_divisible_by_replicas_is_a_user_error():
    with pytest.raises(UserError, match="batch_size=16 does not divide over 3 replicas"):
        plan_lib.run_plan(demo_cpu.get_config(), num_train=320, num_replicas=3)


def test_calls_stop_at_every_event_and_the_end():
    plan = {"total_steps": 23, "eval_every": 10, "checkpoint_every": 5, "log_every": 4}
    assert plan_lib.steps_until_event(0, plan, steps_per_execution=32) == 4
    assert plan_lib.steps_until_event(4, plan, steps_per_execution=32) == 1
    assert plan_lib.steps_until_event(20, plan, steps_per_execution=32) == 3
    assert plan_lib.steps_until_event(20, plan, steps_per_execution=2) == 2
    assert plan_lib.is_due(23, 10, 23) and not plan_lib.is_due(21, 10, 23)


def test_tpu_gets_bfloat16_and_several_steps_per_execution_in_the_plan():
    config = nail_unet_effb4.get_config()
    plan = plan_lib.run_plan(config, num_train=320, num_replicas=8, on_tpu=True)
    assert plan["precision"] == "mixed_bfloat16"
    assert plan["steps_per_execution"] == plan_lib.TPU_STEPS_PER_EXECUTION
    assert config.train.precision == "mixed_float16"  # the config keeps what the user chose
    config.train.precision, config.train.steps_per_execution = "float32", 8
    plan = plan_lib.run_plan(config, num_train=320, num_replicas=8, on_tpu=True)
    assert (plan["precision"], plan["steps_per_execution"]) == ("float32", 8)  # explicit stay
    plan = plan_lib.run_plan(nail_unet_effb4.get_config(), num_train=320, num_replicas=8)
    assert (plan["precision"], plan["steps_per_execution"]) == ("mixed_float16", 1)
