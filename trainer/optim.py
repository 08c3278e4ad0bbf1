"""Optimizers and learning-rate schedules: RectifiedAdam, and the trainer's choice of both.

`RectifiedAdam` is RAdam (Liu et al. 2019, "On the Variance of the Adaptive Learning
Rate and Beyond", Algorithm 2) written as a new-style Keras optimizer (`build` +
`update_step`), so that it runs under `tf.distribute` strategies, inside
`LossScaleOptimizer` and in XLA-compiled steps. It is written here because
`tensorflow-addons` is end-of-life and no longer imports on TF >= 2.16
(`ModuleNotFoundError: No module named 'keras.src.engine'`); its arguments and their
meaning are those of `tfa.optimizers.RectifiedAdam`, so configs written for it carry over.

`create_optimizer` turns the config's `train` group into a schedule and an optimizer;
`learning_rate_at` reads the learning rate back for logging.
"""

# isort: split
import contextlib

from trainer.errors import UserError

import tensorflow as tf

OPTIMIZERS = ("radam", "adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _one_minus_power(beta, step):
    """`1 - beta**step` without the cancellation of the naive form.

    For beta_2 = 0.999 and small steps, `1 - pow(beta, step)` in float32 loses three of
    its seven digits, which moved RAdam's length of the SMA (and so its rectification
    term) by ~1e-2 at step 6; `expm1` keeps float32 precision.
    """
    return -tf.math.expm1(step * tf.math.log(beta))


def tfa_warmup_decay(learning_rate, step, *, total_steps, warmup_proportion, min_lr):
    """tensorflow-addons RAdam's own schedule: linear warmup, then linear decay.

    Over the first `warmup_proportion * total_steps` updates the rate rises linearly
    from `learning_rate / warmup_steps` to `learning_rate`; it then falls linearly to
    `min_lr` at `total_steps` and stays there.

    Args:
      learning_rate: float32 scalar, the rate before this schedule (a float or the
        value of a `LearningRateSchedule`).
      step: float32 scalar, the 1-based number of the update (`iterations + 1`).
      total_steps: positive Python int.
      warmup_proportion: Python float in [0, 1].
      min_lr: Python float, the rate from `total_steps` on.

    Returns:
      float32 scalar, the learning rate of this update.
    """
    total_steps = tf.constant(float(total_steps), tf.float32)
    warmup_steps = total_steps * warmup_proportion
    decay_steps = tf.maximum(total_steps - warmup_steps, 1.0)
    decay_rate = (min_lr - learning_rate) / decay_steps
    # The warmup branch is only taken when step <= warmup_steps, so step >= 1 implies
    # warmup_steps >= 1 there; the floor only keeps the unused branch finite.
    warming = learning_rate * step / tf.maximum(warmup_steps, 1.0)
    decaying = learning_rate + decay_rate * tf.minimum(step - warmup_steps, decay_steps)
    return tf.where(step <= warmup_steps, warming, decaying)


@tf.keras.utils.register_keras_serializable(package="trainer")
class RectifiedAdam(tf.keras.optimizers.Optimizer):
    """RAdam with tensorflow-addons' arguments and semantics.

    Per variable, with gradient g and 1-based step t (Algorithm 2 of the paper):

        m = beta_1 m + (1 - beta_1) g            v = beta_2 v + (1 - beta_2) g^2
        m_hat = m / (1 - beta_1^t)               v_hat = sqrt(v / (1 - beta_2^t))
        sma_inf = 2 / (1 - beta_2) - 1
        sma_t = sma_inf - 2 t beta_2^t / (1 - beta_2^t)
        r_t = sqrt((sma_t - 4)(sma_t - 2) sma_inf / ((sma_inf - 4)(sma_inf - 2) sma_t))
        update = r_t m_hat / (v_hat + epsilon)   if sma_t >= sma_threshold
                 m_hat                           otherwise
        var -= lr_t (update + weight_decay var)

    With beta_2 = 0.999, sma_t is about t, so the first 5 steps are un-adapted momentum
    steps. `amsgrad` uses the running maximum of v in place of v. `lr_t` is
    `learning_rate` (a float or a schedule of `iterations`), times tfa's own warmup and
    decay when `total_steps > 0` (see `tfa_warmup_decay`).

    `weight_decay` is tfa's: added to the update, so multiplied by `lr_t`. It replaces
    the base Keras optimizer's decoupled weight decay, which would otherwise apply it a
    second time; `exclude_from_weight_decay` is honoured. The scalar coefficients are
    computed in float32 whatever the variable's dtype, since beta_2 = 0.999 rounds to 1
    in bfloat16.

    Args:
      learning_rate: float or `tf.keras.optimizers.schedules.LearningRateSchedule`.
      beta_1: decay rate of the first-moment estimate.
      beta_2: decay rate of the second-moment estimate.
      epsilon: added to `v_hat`; 0 or None means Keras' `epsilon()`, as in tfa.
      weight_decay: tfa-style weight decay (see above); 0 disables it.
      amsgrad: keep the maximum of the second moment (not in the paper).
      sma_threshold: length of the approximated SMA from which the rectified
        (adaptive) step is used.
      total_steps: > 0 enables tfa's warmup and linear decay over this many steps.
      warmup_proportion: fraction of `total_steps` spent warming up.
      min_lr: learning rate reached at `total_steps`.
      name: name of the optimizer's variables and ops.
      **kwargs: the base Keras optimizer's keywords (`clipnorm`, `clipvalue`,
        `global_clipnorm`, `use_ema`, `ema_momentum`, `ema_overwrite_frequency`,
        `jit_compile`).
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay=0.0,
        amsgrad=False,
        sma_threshold=5.0,
        total_steps=0,
        warmup_proportion=0.1,
        min_lr=0.0,
        name="RectifiedAdam",
        **kwargs,
    ):
        super().__init__(name=name, weight_decay=weight_decay, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon or tf.keras.backend.epsilon()
        self.amsgrad = amsgrad
        self.sma_threshold = sma_threshold
        self.total_steps = int(total_steps)
        self.warmup_proportion = warmup_proportion
        self.min_lr = min_lr
        self._step_coefficients = None  # set for the length of one update of all variables

    def build(self, var_list):
        """Creates the slot variables `m`, `v` and, with `amsgrad`, `vhat`.

        Args:
          var_list: the model variables this optimizer will update.
        """
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._momentums = [self.add_variable_from_reference(var, "m") for var in var_list]
        self._velocities = [self.add_variable_from_reference(var, "v") for var in var_list]
        if self.amsgrad:
            self._velocity_hats = [
                self.add_variable_from_reference(var, "vhat") for var in var_list
            ]

    def _apply_weight_decay(self, variables):
        # The base class would subtract lr * weight_decay * var before `update_step`;
        # tfa's decay is applied inside `update_step` instead (see the class docstring).
        del variables

    def _coefficients(self):
        """Returns float32 scalars `(lr_t, m_scale, v_scale, rect, use_rect)` of this step.

        `m_hat = m * m_scale`, `v_hat = sqrt(v * v_scale)`, `rect` is r_t and `use_rect`
        whether the rectified step applies.
        """
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1 = tf.cast(self.beta_1, tf.float32)
        beta_2 = tf.cast(self.beta_2, tf.float32)
        lr = tf.cast(self.learning_rate, tf.float32)
        if self.total_steps > 0:
            lr = tfa_warmup_decay(
                lr,
                step,
                total_steps=self.total_steps,
                warmup_proportion=self.warmup_proportion,
                min_lr=self.min_lr,
            )
        bias_1 = _one_minus_power(beta_1, step)
        bias_2 = _one_minus_power(beta_2, step)
        sma_inf = 2.0 / (1.0 - beta_2) - 1.0
        sma_t = sma_inf - 2.0 * step * (1.0 - bias_2) / bias_2
        # Clamped at 0 so that the unused branch (sma_t < 4) is 0 rather than NaN, which
        # would trip `tf.debugging.enable_check_numerics`.
        rect = tf.sqrt(
            tf.maximum(
                (sma_t - 4.0)
                * (sma_t - 2.0)
                * sma_inf
                / ((sma_inf - 4.0) * (sma_inf - 2.0) * sma_t),
                0.0,
            )
        )
        return lr, 1.0 / bias_1, 1.0 / bias_2, rect, sma_t >= self.sma_threshold

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        # The step's coefficients depend on the step alone: build them once per
        # update of all variables, not once per variable (~90 sets of scalar ops
        # a step for a ResNet-18 U-Net, and seconds of tracing). Not with Keras's
        # per-variable XLA functions (`jit_compile`, on GPUs), which are traced once
        # and would keep the first step's values.
        self._step_coefficients = None if self.jit_compile else self._coefficients()
        try:
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        finally:
            self._step_coefficients = None

    def update_step(self, gradient, variable):
        """Applies one RAdam update to `variable`.

        Args:
          gradient: the (aggregated, unscaled) gradient of `variable`; sparse gradients
            are made dense, so rows without gradient still move with their momentum.
          variable: a model variable passed to `build`.
        """
        dtype = variable.dtype
        gradient = tf.cast(tf.convert_to_tensor(gradient), dtype)
        index = self._index_dict[self._var_key(variable)]
        m = self._momentums[index]
        v = self._velocities[index]
        lr, m_scale, v_scale, rect, use_rect = self._step_coefficients or self._coefficients()
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)

        m.assign(beta_1 * m + (1.0 - beta_1) * gradient)
        v.assign(beta_2 * v + (1.0 - beta_2) * tf.square(gradient))
        second_moment = v
        if self.amsgrad:
            second_moment = self._velocity_hats[index]
            second_moment.assign(tf.maximum(second_moment, v))

        m_hat = m * tf.cast(m_scale, dtype)
        v_hat = tf.sqrt(second_moment * tf.cast(v_scale, dtype))
        rectified = tf.cast(rect, dtype) * m_hat / (v_hat + tf.cast(self.epsilon, dtype))
        update = tf.where(use_rect, rectified, m_hat)
        if self.weight_decay and self._use_weight_decay(variable):
            update += tf.cast(self.weight_decay, dtype) * variable
        variable.assign_sub(tf.cast(lr, dtype) * update)

    def get_config(self):
        """Returns the constructor's arguments; `from_config` rebuilds the optimizer."""
        config = super().get_config()
        learning_rate = self._serialize_hyperparameter(self._learning_rate)
        if not isinstance(learning_rate, dict):
            # A numpy float32 from the variable; json.dumps rejects those.
            learning_rate = float(learning_rate)
        config.update(
            {
                "learning_rate": learning_rate,
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "weight_decay": self.weight_decay,
                "amsgrad": self.amsgrad,
                "sma_threshold": self.sma_threshold,
                "total_steps": self.total_steps,
                "warmup_proportion": self.warmup_proportion,
                "min_lr": self.min_lr,
            }
        )
        return config


def _check_choice(field, value, choices):
    if value not in choices:
        raise UserError(
            f"--config.train.{field}={value!r} is not one of {', '.join(choices)}; "
            "pick one of those."
        )


def create_schedule(train_config, total_steps):
    """Builds the learning-rate schedule: linear warmup from 0, then cosine or constant.

    Both are Keras' `CosineDecay` (with `alpha=1` it stays at its peak), so a saved
    optimizer config deserialises without custom objects.

    Args:
      train_config: the config's `train` group; reads `learning_rate` (peak),
        `warmup_steps` and `lr_schedule` ('cosine': to 0 at `total_steps`;
        'constant': the peak after warmup).
      total_steps: number of optimizer steps of the whole run.

    Returns:
      A `tf.keras.optimizers.schedules.LearningRateSchedule` of the optimizer's
      `iterations` (0-based).

    Raises:
      UserError: on an unknown `lr_schedule` or a warmup longer than the run.
    """
    _check_choice("lr_schedule", train_config.lr_schedule, LR_SCHEDULES)
    warmup_steps = int(train_config.warmup_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise UserError(
            f"--config.train.warmup_steps={warmup_steps} is outside 0..{total_steps} "
            "(the run's total steps); shorten the warmup."
        )
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        # CosineDecay divides by decay_steps; a run that is all warmup has none left.
        decay_steps=max(total_steps - warmup_steps, 1),
        alpha=0.0 if train_config.lr_schedule == "cosine" else 1.0,
        warmup_target=float(train_config.learning_rate),
        warmup_steps=warmup_steps,
    )


def create_optimizer(train_config, total_steps, *, precision=None):
    """Builds the optimizer the config's `train` group asks for, with its schedule.

    `weight_decay` means tfa's coupled decay for 'radam' and Keras' decoupled decay
    (`var -= lr * weight_decay * var`) for the others.

    The optimizer is always wrapped in a dynamic `LossScaleOptimizer`: under
    'mixed_float16' it scales the loss (from 2**15) so that float16 gradients do
    not underflow; under 'float32' and 'mixed_bfloat16', which need no scaling,
    it starts at a scale of 1. In every precision it skips steps whose
    gradients are not finite, so that one bad batch cannot poison the weights
    (scales are powers of two: scaling and unscaling are exact).

    Args:
      train_config: the config's `train` group; reads `optimizer`
        (radam | adam | adamw | sgd), `learning_rate`, `weight_decay`, `warmup_steps`,
        `lr_schedule`, `momentum` (sgd), `ema_decay` and `precision`.
      total_steps: number of optimizer steps of the whole run.
      precision: the run's precision when it differs from `train_config.precision`
        (the run plan's, e.g. bfloat16 on a TPU).

    Returns:
      A `tf.keras.mixed_precision.LossScaleOptimizer` around the optimizer. Create it
      under the strategy's scope so that its variables are distributed.

    Raises:
      UserError: on an unknown optimizer, schedule or precision name.
    """
    _check_choice("optimizer", train_config.optimizer, OPTIMIZERS)
    precision = precision or train_config.precision
    _check_choice("precision", precision, PRECISIONS)
    schedule = create_schedule(train_config, total_steps)
    # Keras applies its decoupled decay whenever weight_decay is not None, even at 0.
    weight_decay = float(train_config.weight_decay) or None
    name = train_config.optimizer
    ema_decay = float(train_config.get("ema_decay", 0.0))  # absent from older config.json
    # Keras keeps the average inside the optimizer (checkpointed with it) and
    # updates it after each applied step; a skipped step leaves it as it is.
    ema = dict(use_ema=ema_decay > 0, ema_momentum=ema_decay or 0.99)
    if name == "radam":
        # total_steps stays 0: the schedule above already does the warmup and decay.
        optimizer = RectifiedAdam(schedule, weight_decay=weight_decay or 0.0, **ema)
    elif name == "adam":
        optimizer = tf.keras.optimizers.Adam(schedule, weight_decay=weight_decay, **ema)
    elif name == "adamw":
        optimizer = tf.keras.optimizers.AdamW(schedule, weight_decay=weight_decay or 0.0, **ema)
    else:
        optimizer = tf.keras.optimizers.SGD(
            schedule, momentum=float(train_config.momentum), weight_decay=weight_decay, **ema
        )
    initial_scale = 2.0**15 if precision == "mixed_float16" else 1.0
    return tf.keras.mixed_precision.LossScaleOptimizer(optimizer, initial_scale=initial_scale)


def learning_rate_at(optimizer, step=None):
    """The learning rate of the update made when `optimizer.iterations == step`.

    Args:
      optimizer: a Keras optimizer, possibly wrapped in a `LossScaleOptimizer`.
      step: 0-based optimizer step; None means the optimizer's current `iterations`
        (the next update), which counts the steps `LossScaleOptimizer` skipped too.

    Returns:
      The learning rate as a Python float, including `RectifiedAdam`'s own tfa warmup
      and decay when it has `total_steps > 0`.
    """
    if isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    if step is None:
        step = int(optimizer.iterations.numpy())
    # `optimizer.learning_rate` of a scheduled optimizer is the value its last update
    # used, so the schedule itself is read to get any step's value.
    learning_rate = optimizer._learning_rate
    if isinstance(learning_rate, tf.keras.optimizers.schedules.LearningRateSchedule):
        learning_rate = learning_rate(step)
    learning_rate = tf.cast(learning_rate, tf.float32)
    if isinstance(optimizer, RectifiedAdam) and optimizer.total_steps > 0:
        learning_rate = tfa_warmup_decay(
            learning_rate,
            tf.constant(step + 1, tf.float32),
            total_steps=optimizer.total_steps,
            warmup_proportion=optimizer.warmup_proportion,
            min_lr=optimizer.min_lr,
        )
    return float(learning_rate)


@contextlib.contextmanager
def averaged_weights(optimizer, variables):
    """Within the block, `variables` hold the optimizer's moving average of them.

    For evaluating, saving the best weights and exporting under
    `train.ema_decay`; the trained values come back on leaving, so that
    training goes on from them. Without an average (`ema_decay` 0) it does nothing.

    Args:
        optimizer: the run's optimizer (a `LossScaleOptimizer` is looked through).
        variables: the model's trainable variables, those the optimizer updates.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not getattr(inner, "use_ema", False) or not getattr(inner, "_built", False):
        yield
        return
    trained = [tf.identity(variable) for variable in variables]
    inner.finalize_variable_values(variables)  # Keras' own: the average into the variables
    try:
        yield
    finally:
        for variable, value in zip(variables, trained, strict=True):
            variable.assign(value)
