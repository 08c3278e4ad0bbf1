"""Pins trainer.optim: RectifiedAdam against hand values and a NumPy Algorithm 2, tfa's
weight decay, amsgrad and warmup, checkpoints, XLA and MirroredStrategy; the schedules,
create_optimizer and learning_rate_at."""

import json
import os
import subprocess
import sys
import textwrap

import trainer  # noqa: F401  (selects tf-keras before TensorFlow loads)

# isort: split
from trainer import optim
from trainer.errors import UserError

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two coordinates, seven steps: sma_t < 5 for steps 1-5 (momentum only), >= 5 from step 6
# (rectified). The signs change so that m and v do not simply track one gradient.
GRADIENTS = np.array(
    [[0.5, -1.0], [-1.0, 0.25], [2.0, 0.5], [0.1, -3.0], [-0.4, 1.5], [1.0, 0.2], [0.3, -0.7]]
)
X0 = np.array([1.0, -2.0])
# The float32 implementation against the float64 reference. Tight enough to catch the
# naive float32 `1 - beta_2**t` (errors of 2e-6 here), which optim avoids with expm1.
RTOL, ATOL = 5e-7, 1e-7


def _reference(
    x0,
    grads,
    *,
    lrs,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    weight_decay=0.0,
    amsgrad=False,
    sma_threshold=5.0,
):
    """Algorithm 2 of Liu et al. (2019) in float64, tfa's extras included.

    Args:
      x0: `[n]` initial values.
      grads: `[steps, n]` gradients.
      lrs: `[steps]` learning rate of each step.

    Returns:
      `([steps, n]` values after each step, `[steps]` whether the step was rectified).
    """
    x = np.array(x0, np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    v_max = np.zeros_like(x)
    sma_inf = 2.0 / (1.0 - beta_2) - 1.0
    values, rectified = [], []
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        m = beta_1 * m + (1.0 - beta_1) * g
        v = beta_2 * v + (1.0 - beta_2) * g * g
        v_max = np.maximum(v_max, v)
        m_hat = m / (1.0 - beta_1**t)
        sma_t = sma_inf - 2.0 * t * beta_2**t / (1.0 - beta_2**t)
        if sma_t >= sma_threshold:
            v_hat = np.sqrt((v_max if amsgrad else v) / (1.0 - beta_2**t))
            r_t = np.sqrt(
                (sma_t - 4.0)
                * (sma_t - 2.0)
                * sma_inf
                / ((sma_inf - 4.0) * (sma_inf - 2.0) * sma_t)
            )
            step = r_t * m_hat / (v_hat + epsilon)
        else:
            step = m_hat
        x = x - lr * (step + weight_decay * x)
        values.append(x.copy())
        rectified.append(bool(sma_t >= sma_threshold))
    return np.array(values), rectified


def _run(optimizer, grads, x0=X0):
    """Applies `grads` one step at a time; returns the variable after each step."""
    var = tf.Variable(np.asarray(x0, np.float32))
    values = []
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g, tf.float32), var)])
        values.append(var.numpy())
    return np.array(values), var


def _train_config(**overrides):
    config = ml_collections.ConfigDict(
        {
            "optimizer": "radam",
            "learning_rate": 1e-3,
            "weight_decay": 0.0,
            "warmup_steps": 10,
            "lr_schedule": "cosine",
            "momentum": 0.9,
            "precision": "float32",
        }
    )
    config.update(overrides)
    return config


def test_first_two_steps_by_hand():
    # lr 0.1, x0 = 1. Step 1, g = 0.5: m = 0.1 * 0.5 = 0.05, m_hat = 0.05 / (1 - 0.9) = 0.5;
    # sma_1 = 1 < 5, so the step is m_hat: x = 1 - 0.1 * 0.5 = 0.95.
    # Step 2, g = -1: m = 0.9 * 0.05 - 0.1 = -0.055, m_hat = -0.055 / (1 - 0.81) = -0.2894737;
    # sma_2 = 2 < 5: x = 0.95 + 0.1 * 0.2894737 = 0.9789474.
    values, _ = _run(optim.RectifiedAdam(0.1), [[0.5], [-1.0]], x0=[1.0])
    np.testing.assert_allclose(values[:, 0], [0.95, 0.9789474], rtol=1e-6)


def test_matches_algorithm_2_through_rectification():
    expected, rectified = _reference(X0, GRADIENTS, lrs=[0.1] * 7)
    # The test covers both phases: sma_t passes 5 between steps 5 (4.996) and 6 (5.994).
    assert rectified == [False] * 5 + [True] * 2
    values, _ = _run(optim.RectifiedAdam(0.1), GRADIENTS)
    np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL)


def test_weight_decay_is_tfa_style_and_applied_once():
    # lr 0.1, wd 0.1, x0 = 2, g = 0.5: step = m_hat + wd * x = 0.5 + 0.2 = 0.7, so
    # x = 2 - 0.1 * 0.7 = 1.93. Keras' decoupled decay on top would give 1.91.
    values, _ = _run(optim.RectifiedAdam(0.1, weight_decay=0.1), [[0.5]], x0=[2.0])
    np.testing.assert_allclose(values[0, 0], 1.93, rtol=1e-6)

    expected, _ = _reference(X0, GRADIENTS, lrs=[0.1] * 7, weight_decay=0.05)
    values, _ = _run(optim.RectifiedAdam(0.1, weight_decay=0.05), GRADIENTS)
    np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL)


def test_weight_decay_honours_exclusions():
    optimizer = optim.RectifiedAdam(0.1, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    var = tf.Variable([2.0], name="bias")
    optimizer.apply_gradients([(tf.constant([0.5]), var)])
    np.testing.assert_allclose(var.numpy(), [1.95], rtol=1e-6)


def test_amsgrad_keeps_the_maximum_second_moment():
    # Large gradients first, then small ones: v shrinks while its maximum does not.
    grads = np.concatenate([np.full((3, 2), 4.0), np.full((5, 2), 0.1)]) * [1.0, -1.0]
    expected, rectified = _reference(X0, grads, lrs=[0.1] * 8, amsgrad=True)
    plain, _ = _reference(X0, grads, lrs=[0.1] * 8)
    assert rectified[-1] and not np.allclose(expected[-1], plain[-1])

    optimizer = optim.RectifiedAdam(0.1, amsgrad=True)
    values, _ = _run(optimizer, grads)
    np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL)
    v, v_max = optimizer._velocities[0].numpy(), optimizer._velocity_hats[0].numpy()
    assert np.all(v_max > v)


def test_no_vhat_slot_without_amsgrad():
    optimizer = optim.RectifiedAdam()
    _run(optimizer, GRADIENTS[:1])
    assert len(optimizer.variables) == 3  # iterations, m, v


def test_tfa_total_steps_warmup_then_linear_decay():
    # total 10, warmup 0.2 -> 2 steps: lr * 1/2, lr * 2/2; then down by
    # (min_lr - lr) / 8 per step to min_lr at step 10, and min_lr after it.
    lr, min_lr = 0.1, 0.02
    expected = [0.05, 0.1] + [lr + (min_lr - lr) * k / 8 for k in range(1, 9)] + [min_lr] * 2
    # With an unreachable sma_threshold every step is m_hat, which equals a constant
    # gradient, so each step's move is exactly lr_t * g.
    optimizer = optim.RectifiedAdam(
        lr, sma_threshold=1e9, total_steps=10, warmup_proportion=0.2, min_lr=min_lr
    )
    assert [optim.learning_rate_at(optimizer, step) for step in range(12)] == pytest.approx(
        expected, rel=1e-6
    )
    values, _ = _run(optimizer, [[2.0]] * 12, x0=[0.0])
    moves = -np.diff(np.concatenate([[0.0], values[:, 0]])) / 2.0
    np.testing.assert_allclose(moves, expected, rtol=1e-5)


def test_learning_rate_schedule_is_read_at_each_step():
    schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay([2, 4], [0.1, 0.05, 0.01])
    lrs = [0.1, 0.1, 0.1, 0.05, 0.05, 0.01, 0.01]  # schedule(iterations), iterations = t - 1
    expected, _ = _reference(X0, GRADIENTS, lrs=lrs)
    optimizer = optim.RectifiedAdam(schedule)
    values, _ = _run(optimizer, GRADIENTS)
    np.testing.assert_allclose(values, expected, rtol=RTOL, atol=ATOL)
    assert optim.learning_rate_at(optimizer) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "learning_rate",
    [0.003, tf.keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.5)],
    ids=["float", "schedule"],
)
def test_get_config_round_trips(learning_rate):
    optimizer = optim.RectifiedAdam(
        learning_rate,
        beta_1=0.8,
        weight_decay=0.01,
        amsgrad=True,
        sma_threshold=4.0,
        total_steps=100,
        warmup_proportion=0.2,
        min_lr=1e-5,
        clipnorm=1.0,
    )
    config = optimizer.get_config()
    json.dumps(config)  # config.json of the work directory holds it
    rebuilt = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(optimizer))
    assert isinstance(rebuilt, optim.RectifiedAdam)
    assert rebuilt.get_config() == config
    assert config["weight_decay"] == 0.01 and config["total_steps"] == 100


@pytest.mark.parametrize("build_first", [True, False], ids=["built", "deferred"])
def test_checkpoint_restores_slots(tmp_path, build_first):
    optimizer = optim.RectifiedAdam(0.1, amsgrad=True)
    _, var = _run(optimizer, GRADIENTS[:6])
    path = tf.train.Checkpoint(var=var, optimizer=optimizer).save(str(tmp_path / "ckpt"))

    new_var = tf.Variable(tf.zeros_like(var))
    new_optimizer = optim.RectifiedAdam(0.1, amsgrad=True)
    if build_first:
        new_optimizer.build([new_var])
    tf.train.Checkpoint(var=new_var, optimizer=new_optimizer).restore(path)
    if not build_first:
        new_optimizer.build([new_var])  # slots created after restore() get their values
    assert int(new_optimizer.iterations) == 6
    for old, new in zip(optimizer.variables, new_optimizer.variables, strict=True):
        np.testing.assert_array_equal(old.numpy(), new.numpy())

    # The next step continues identically.
    optimizer.apply_gradients([(tf.constant(GRADIENTS[6], tf.float32), var)])
    new_optimizer.apply_gradients([(tf.constant(GRADIENTS[6], tf.float32), new_var)])
    np.testing.assert_array_equal(var.numpy(), new_var.numpy())


def test_converges_on_a_quadratic():
    target = tf.constant([3.0, -1.0, 0.5])
    var = tf.Variable(tf.zeros(3))
    optimizer = optim.RectifiedAdam(0.1)

    @tf.function
    def train(steps):
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(var - target))
            optimizer.apply_gradients([(tape.gradient(loss, var), var)])

    train(tf.constant(300))
    np.testing.assert_allclose(var.numpy(), target.numpy(), atol=1e-2)


@pytest.mark.parametrize("per_variable", [False, True], ids=["step", "per_variable"])
def test_xla_compiled_steps_match_eager(per_variable):
    expected, _ = _run(optim.RectifiedAdam(0.1, weight_decay=0.01, amsgrad=True), GRADIENTS)
    var = tf.Variable(X0.astype(np.float32))
    optimizer = optim.RectifiedAdam(0.1, weight_decay=0.01, amsgrad=True)
    if per_variable:
        # What Keras does with jit_compile=True on a GPU (it turns it off without one): each
        # variable's update_step is compiled on its own.
        optimizer.jit_compile = True
        step = optimizer.apply_gradients
    else:
        step = tf.function(
            lambda grads_and_vars: optimizer.apply_gradients(grads_and_vars), jit_compile=True
        )

    for g, want in zip(GRADIENTS, expected, strict=True):
        step([(tf.constant(g, tf.float32), var)])
        np.testing.assert_allclose(var.numpy(), want, rtol=1e-6, atol=1e-7)


def test_loss_scale_optimizer_steps_like_the_plain_one():
    expected, _ = _run(optim.RectifiedAdam(0.1), GRADIENTS)
    optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optim.RectifiedAdam(0.1))
    var = tf.Variable(X0.astype(np.float32))
    for g, want in zip(GRADIENTS, expected, strict=True):
        with tf.GradientTape() as tape:
            # d(loss)/d(var) = g; the loss scale is a power of two, so unscaling is exact.
            scaled_loss = optimizer.get_scaled_loss(tf.reduce_sum(tf.constant(g, tf.float32) * var))
        (grad,) = optimizer.get_unscaled_gradients([tape.gradient(scaled_loss, var)])
        optimizer.apply_gradients([(grad, var)])
        np.testing.assert_allclose(var.numpy(), want, rtol=1e-6)
    assert float(optimizer.loss_scale) > 1.0

    # A non-finite gradient is skipped: no move, but tf_keras' LossScaleOptimizerV3 still
    # counts the step in `iterations` (so the schedule and RAdam's t advance).
    before = var.numpy()
    optimizer.apply_gradients([(tf.constant([np.inf, 1.0]), var)])
    np.testing.assert_array_equal(var.numpy(), before)
    assert int(optimizer.inner_optimizer.iterations) == len(GRADIENTS) + 1


def test_trains_a_mixed_float16_keras_model():
    # Float16 compute, float32 variables (AutoCastVariable): slots and updates stay float32.
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = tf.keras.layers.Dense(2)
        layer.build((None, 3))
        optimizer = optim.create_optimizer(_train_config(precision="mixed_float16"), 100)
        before = layer.kernel.numpy()
        for _ in range(12):
            with tf.GradientTape() as tape:
                outputs = layer(tf.ones((4, 3)))
                assert outputs.dtype == tf.float16
                loss = optimizer.get_scaled_loss(tf.reduce_mean(tf.cast(outputs, tf.float32)))
            grads = optimizer.get_unscaled_gradients(tape.gradient(loss, layer.trainable_variables))
            optimizer.apply_gradients(zip(grads, layer.trainable_variables, strict=True))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert all(slot.dtype == tf.float32 for slot in optimizer.inner_optimizer.variables[1:])
    assert np.all(layer.kernel.numpy() < before)  # a positive gradient lowered every weight


@pytest.mark.parametrize(
    "lr_schedule, expected",
    [
        # warmup 10 of 100 steps, peak 1e-3: 0 at step 0, the peak at the end of warmup,
        # half of it half-way through the cosine (step 10 + 45), 0 from step 100 on.
        ("cosine", {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 5e-4, 100: 0.0, 150: 0.0}),
        ("constant", {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 1e-3, 100: 1e-3, 150: 1e-3}),
    ],
)
def test_schedule_values(lr_schedule, expected):
    schedule = optim.create_schedule(_train_config(lr_schedule=lr_schedule), total_steps=100)
    values = {step: float(schedule(step)) for step in expected}
    assert values == pytest.approx(expected, abs=1e-9)


def test_schedule_without_warmup_starts_at_the_peak():
    schedule = optim.create_schedule(_train_config(warmup_steps=0), total_steps=100)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("radam", optim.RectifiedAdam),
        ("adam", tf.keras.optimizers.Adam),
        ("adamw", tf.keras.optimizers.AdamW),
        ("sgd", tf.keras.optimizers.SGD),
    ],
)
def test_create_optimizer_for_each_name(name, cls):
    wrapper = optim.create_optimizer(
        _train_config(optimizer=name, weight_decay=1e-4, momentum=0.8), total_steps=100
    )
    optimizer = wrapper.inner_optimizer
    assert type(optimizer) is cls
    assert optimizer.weight_decay == pytest.approx(1e-4)
    assert optim.learning_rate_at(optimizer, 10) == pytest.approx(1e-3)
    if name == "radam":
        assert optimizer.total_steps == 0  # the schedule warms up, not tfa's total_steps
    if name == "sgd":
        assert optimizer.momentum == pytest.approx(0.8)


def test_create_optimizer_without_weight_decay():
    optimizer = optim.create_optimizer(_train_config(optimizer="adam"), total_steps=100)
    assert (
        optimizer.inner_optimizer.weight_decay is None
    )  # Keras would otherwise assign var -= 0 each step


@pytest.mark.parametrize(
    "precision, scale", [("mixed_float16", 2.0**15), ("mixed_bfloat16", 1.0), ("float32", 1.0)]
)
def test_loss_scaling_only_for_float16_and_finite_guard_for_all(precision, scale):
    optimizer = optim.create_optimizer(_train_config(precision=precision), total_steps=100)
    assert isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert float(optimizer.loss_scale) == scale
    assert isinstance(optimizer.inner_optimizer, optim.RectifiedAdam)
    assert optim.learning_rate_at(optimizer, 5) == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "field, value",
    [("optimizer", "lamb"), ("lr_schedule", "step"), ("precision", "float16")],
)
def test_unknown_names_raise_user_error(field, value):
    with pytest.raises(UserError) as error:
        optim.create_optimizer(_train_config(**{field: value}), total_steps=100)
    message = str(error.value)
    assert f"--config.train.{field}='{value}'" in message and "\n" not in message
    choices = {"optimizer": optim.OPTIMIZERS, "lr_schedule": optim.LR_SCHEDULES}
    for choice in choices.get(field, optim.PRECISIONS):
        assert choice in message


def test_warmup_longer_than_the_run_raises_user_error():
    with pytest.raises(UserError, match=r"--config.train.warmup_steps=200"):
        optim.create_optimizer(_train_config(warmup_steps=200), total_steps=100)


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import trainer  # noqa: F401
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainer import optim

    grads = json.loads(sys.argv[1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        var = tf.Variable([1.0, -2.0])
        optimizer = optim.RectifiedAdam(0.1, weight_decay=0.05, amsgrad=True)

    @tf.function
    def step(g):
        def replica_fn(g):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            sign = tf.cast(1 - 2 * replica, tf.float32)
            # Different per replica; the all-reduced sum is g.
            optimizer.apply_gradients([(g / 2.0 + sign * 0.3, var)])
        strategy.run(replica_fn, args=(g,))

    values = []
    for g in grads:
        step(tf.constant(g, tf.float32))
        copies = [v.numpy().tolist() for v in strategy.experimental_local_results(var)]
        values.append(copies)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "values": values}))
    """
)


def test_mirrored_strategy_on_two_cpu_devices():
    # A subprocess: logical devices must be set before TF initialises its devices, which
    # other tests in this pytest process have already done.
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, json.dumps(GRADIENTS.tolist())],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["replicas"] == 2
    values = np.array(output["values"])  # [steps, replicas, 2]
    np.testing.assert_array_equal(values[:, 0], values[:, 1])
    expected, _ = _reference(X0, GRADIENTS, lrs=[0.1] * 7, weight_decay=0.05, amsgrad=True)
    np.testing.assert_allclose(values[:, 0], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["radam", "sgd"])
def test_the_average_of_the_weights_is_swapped_in_for_a_block_then_out(name):
    optimizer = optim.create_optimizer(
        _train_config(optimizer=name, ema_decay=0.5, warmup_steps=0), total_steps=10
    )
    variable = tf.Variable([1.0, -2.0])
    history = [variable.numpy().copy()]
    for gradient in ([0.5, 0.5], [1.0, -1.0], [-0.3, 0.2]):
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
        history.append(variable.numpy().copy())
    # Keras' average starts at the initial value, then average = 0.5 avg + 0.5 value.
    expected = history[0]
    for value in history[1:]:
        expected = 0.5 * expected + 0.5 * value
    trained = variable.numpy().copy()
    with optim.averaged_weights(optimizer, [variable]):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
        assert not np.allclose(variable.numpy(), trained)
    np.testing.assert_array_equal(variable.numpy(), trained)


def test_without_an_average_the_block_leaves_the_weights_alone():
    optimizer = optim.create_optimizer(_train_config(ema_decay=0.0), total_steps=10)
    variable = tf.Variable([1.0, -2.0])
    optimizer.apply_gradients([(tf.constant([0.5, 0.5]), variable)])
    trained = variable.numpy().copy()
    with optim.averaged_weights(optimizer, [variable]):
        np.testing.assert_array_equal(variable.numpy(), trained)
    np.testing.assert_array_equal(variable.numpy(), trained)
