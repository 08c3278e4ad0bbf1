"""The train step, the multi-step train function and the evaluation pass.

Per replica, a step is: forward, per-example Dice+Focal loss (binary, or
categorical for several classes: `classes.Task`), average over the
GLOBAL batch (so that the all-reduced gradient is the gradient of the global
mean, whatever the replica count), loss scaling under float16, gradients,
apply (the optimizer all-reduces; a loss-scale optimizer skips non-finite
steps), and exact per-class confusion sums for the metrics.
"""

import dataclasses

from trainer import classes, optim
from trainer import model as model_lib

import numpy as np
import tensorflow as tf

_SUM = tf.distribute.ReduceOp.SUM


def create_step_counter() -> tf.Variable:
    """The global step: counts every step run, skipped ones included."""
    return tf.Variable(
        0,
        dtype=tf.int64,
        trainable=False,
        name="step",
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


@dataclasses.dataclass
class Trainee:
    """What a run trains: the network, its optimizer, the step counter and the step functions.

    Attributes:
        model: the Keras network, built under the strategy's scope.
        optimizer: a `LossScaleOptimizer` (see `optim.create_optimizer`).
        step: the global step counter.
        train_fn: `train_fn(iterator, num_steps) -> dict` (see `make_train_fn`).
        eval_fn: `eval_fn(distributed_batch) -> list` (see `make_eval_fn`).
        strategy: the strategy the variables live on.
        global_batch_size: examples per step over all replicas.
        task: the classes' loss and metrics.
    """

    model: tf.keras.Model
    optimizer: tf.keras.optimizers.Optimizer
    step: tf.Variable
    train_fn: object
    eval_fn: object
    strategy: tf.distribute.Strategy
    global_batch_size: int
    task: classes.Task = classes.BINARY


def build_trainee(config, strategy: tf.distribute.Strategy, plan: dict) -> Trainee:
    """Builds the network, its optimizer, the step counter and the step functions.

    The one builder of train, the benchmarks and the tests. Seeds Keras from
    `train.seed` (the same seed gives the same initial weights) and builds the
    model under the plan's precision policy, which is restored afterwards: the
    layers keep the policy they were built with. The optimizer's slots are
    built at once, so that a checkpoint restores into them immediately.

    Args:
        config: the run's config.
        strategy: the distribution strategy.
        plan: `plan.run_plan(...)`: reads `total_steps`, `precision` and
            `global_batch_size`.
    """
    tf.keras.utils.set_random_seed(config.train.seed)
    previous_policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(plan["precision"])
    try:
        with strategy.scope():
            model = model_lib.build_model(
                config.model,
                image_size=config.data.image_size,
                num_replicas=strategy.num_replicas_in_sync,
            )
            optimizer = optim.create_optimizer(
                config.train, plan["total_steps"], precision=plan["precision"]
            )
            optimizer.build(model.trainable_variables)
            step = create_step_counter()
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)
    task = classes.task(config)
    train_fn = make_train_fn(
        model,
        optimizer,
        step,
        strategy,
        global_batch_size=plan["global_batch_size"],
        jit_compile=config.train.jit_compile,
        task=task,
    )
    eval_fn = make_eval_fn(model, strategy, task=task)
    batch = plan["global_batch_size"]
    return Trainee(model, optimizer, step, train_fn, eval_fn, strategy, batch, task)


def make_train_fn(
    model: tf.keras.Model,
    optimizer: tf.keras.optimizers.Optimizer,
    step: tf.Variable,
    strategy: tf.distribute.Strategy,
    *,
    global_batch_size: int,
    jit_compile: bool = False,
    task: classes.Task = classes.BINARY,
):
    """Returns `train_fn(iterator, num_steps) -> dict` running num_steps steps in one call.

    `optimizer` is a LossScaleOptimizer (see `optim.create_optimizer`), which
    skips steps with non-finite gradients. The dict holds the mean loss over the
    finite steps, `finite_steps` (steps whose loss and gradients were finite on
    every replica: the applied ones), and the summed confusion counts `tp`,
    `fp`, `fn` of the training batches, int64 `[C]` (one per class; C = 1 when
    binary).
    """

    def replica_step(images, masks):
        # Batch norm updates its moving statistics in the forward pass; a skipped
        # step must not leave NaN statistics behind.
        statistics_before = [tf.identity(v) for v in model.non_trainable_variables]
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example_loss = task.loss(masks, probabilities)
            loss = tf.nn.compute_average_loss(per_example_loss, global_batch_size=global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled_loss = optimizer.get_scaled_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        gradients = optimizer.get_unscaled_gradients(gradients)
        # The loss-scale optimizer skips the step if any replica's gradient is not finite.
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        is_bad = tf.logical_not(
            tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients + [loss]])
        )
        bad_anywhere = tf.distribute.get_replica_context().all_reduce(
            _SUM, tf.cast(is_bad, tf.int32)
        )
        for variable, before in zip(model.non_trainable_variables, statistics_before):
            variable.assign(tf.where(bad_anywhere > 0, before, variable))
        tp, fp, fn = (tf.reduce_sum(c, axis=0) for c in task.confusion(masks, probabilities))
        return loss, bad_anywhere, tp, fp, fn

    # Graph-style code (no Python control flow on tensors): autograph would only
    # spend seconds of every run rewriting it and every Keras layer it calls.
    replica_step = tf.autograph.experimental.do_not_convert(replica_step)
    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_fn(iterator, num_steps):
        loss_sum = tf.constant(0.0)
        finite_steps = tf.constant(0, tf.int64)
        counts = [tf.zeros([task.num_channels], tf.int64)] * 3
        for _ in tf.range(num_steps):
            loss, bad_anywhere, *step_counts = strategy.run(replica_step, args=next(iterator))
            loss = strategy.reduce(_SUM, loss, axis=None)
            # Already all-reduced inside the step: every replica holds the same count.
            is_finite = strategy.experimental_local_results(bad_anywhere)[0] == 0
            loss_sum += tf.where(is_finite, loss, 0.0)
            finite_steps += tf.cast(is_finite, tf.int64)
            counts = [
                total + tf.cast(strategy.reduce(_SUM, c, axis=None), tf.int64)
                for total, c in zip(counts, step_counts)
            ]
            step.assign_add(1)
        mean_loss = tf.math.divide_no_nan(loss_sum, tf.cast(finite_steps, tf.float32))
        mean_loss = tf.where(finite_steps > 0, mean_loss, float("nan"))
        return {
            "loss": mean_loss,
            "finite_steps": finite_steps,
            "tp": counts[0],
            "fp": counts[1],
            "fn": counts[2],
        }

    return train_fn


def make_eval_fn(
    model: tf.keras.Model, strategy: tf.distribute.Strategy, *, task: classes.Task = classes.BINARY
):
    """Returns `eval_fn(distributed_batch) -> list` of global sums for one batch.

    The batch is `(images, masks, weights)` from `make_dataset(with_weights=True)`;
    padding examples have weight 0. The sums (loss over examples, example count,
    and per-class tp, fp, fn `[C]`) stay exact however the examples are spread
    over replicas. Under `data.resize=crop` the examples are squares of photos
    and the weights are per pixel `[b, s, s, 1]`: a pixel another square counts
    is 0, and the loss and count are those of the squares.
    """

    def replica_eval(images, masks, weights):
        probabilities = model(images, training=False)
        counted = None
        if weights.shape.rank == 4:
            counted = weights
            weights = tf.reduce_max(weights, axis=[1, 2, 3])
        loss_sum = tf.reduce_sum(task.loss(masks, probabilities) * weights)
        is_real = tf.cast(weights > 0, tf.int32)
        count = tf.reduce_sum(is_real)
        tp, fp, fn = (
            tf.reduce_sum(c * is_real[:, None], axis=0)
            for c in task.confusion(masks, probabilities, counted=counted)
        )
        return loss_sum, count, tp, fp, fn

    @tf.function(autograph=False)  # graph-style code, see make_train_fn
    def eval_fn(batch):
        sums = strategy.run(replica_eval, args=batch)
        return [strategy.reduce(_SUM, s, axis=None) for s in sums]

    return eval_fn


def evaluate(eval_fn, dataset, task: classes.Task = classes.BINARY) -> dict:
    """Runs one pass over a distributed validation dataset.

    Returns:
        `loss` (mean per example), `iou`, `fscore` (from the summed counts:
        means over the foreground classes), `per_class` ({name: {iou, fscore}}),
        `num_examples`, and the raw per-class `tp`, `fp`, `fn` (lists of ints).
    """
    loss_sum, count, totals = 0.0, 0, None
    for batch in dataset:
        batch_loss, batch_count, *batch_counts = eval_fn(batch)
        loss_sum += float(batch_loss)
        count += int(batch_count)
        batch_counts = [c.numpy().astype(np.int64) for c in batch_counts]
        totals = batch_counts if totals is None else [a + b for a, b in zip(totals, batch_counts)]
    empty = [np.zeros(task.num_channels, np.int64)] * 3
    tp, fp, fn = ([int(v) for v in c] for c in (totals or empty))
    return {
        "loss": loss_sum / max(count, 1),
        **task.scores(tp, fp, fn),
        "num_examples": count,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }
