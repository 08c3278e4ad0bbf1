"""Trains a segmentation model on a data folder; resumes when the work directory has a run.

    python -m trainer.train --config=configs/demo_cpu.py --data_root=data/synthetic \
        --workdir=runs/demo
    python -m trainer.train --config=configs/nail_unet_effb4.py --strategy=mirrored \
        --data_root=/data/nails --workdir=/work/effb4 --config.train.epochs=50

A restart on the same work directory resumes from its latest checkpoint.
"""

import os
import shutil
import sys
import tempfile
import time

from trainer import (
    checkpoint,
    distribute,
    loop,
    metrics,
    pictures,
    preemption,
    report,
    serving,
)
from trainer import model as model_lib
from trainer.data import cache as data_cache
from trainer.data import manifest, pipeline
from trainer.errors import UserError, exit_on_user_error
from trainer.plan import adapt_to_tpu, is_due, run_plan, steps_until_event

import ml_collections
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
flags.DEFINE_string("data_root", None, "Data set folder (Images/ + Masks/, or train/ + valid/).")
flags.DEFINE_enum("strategy", "one_device", distribute.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu ('local' on a TPU VM).")
flags.DEFINE_integer("num_cpu_devices", 1, "Split the host CPU into N logical devices.")
flags.DEFINE_bool("overwrite", False, "Delete a previous run in --workdir instead of resuming it.")
flags.mark_flags_as_required(["config", "workdir", "data_root"])


def write_config(workdir: str, config: ml_collections.ConfigDict, plan: dict) -> None:
    """Writes the resolved config, with the derived run plan, to WORKDIR/config.json."""
    resolved = config.to_dict()
    resolved["run"] = dict(plan, strategy=FLAGS.strategy, data_root=FLAGS.data_root)
    checkpoint.write_json_atomically(os.path.join(workdir, "config.json"), resolved)


@exit_on_user_error
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    workdir = FLAGS.workdir

    # --- Devices and strategy -------------------------------------------------
    distribute.configure_cpu_devices(FLAGS.num_cpu_devices)
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    distribute.describe(strategy)
    is_chief = distribute.is_chief(strategy)
    # Saving weights, exporting and drawing samples read synchronised batch-norm
    # statistics, a collective op: every worker does them, non-chiefs in a temp dir.
    save_dir = workdir if is_chief else tempfile.mkdtemp(prefix="worker_results_")
    num_replicas = strategy.num_replicas_in_sync
    if FLAGS.strategy == "tpu":
        adapt_to_tpu(config)
    model_lib.check_model_config(config.model, config.data.image_size)
    cache_dir = data_cache.cache_dir(config.data, workdir)

    # --- Data -----------------------------------------------------------------
    train_rows, valid_rows = manifest.read_manifests(
        FLAGS.data_root, fallback_dir=workdir, valid_fraction=config.data.valid_fraction
    )
    plan = run_plan(config, len(train_rows), num_replicas)
    _log_summary(config, plan, train_rows, valid_rows)
    if is_chief:
        checkpoint.check_workdir(workdir, config, overwrite=FLAGS.overwrite)

    # --- Model, optimizer, state ------------------------------------------------
    model, optimizer, step = loop.build_training(config, strategy, total_steps=plan["total_steps"])
    with strategy.scope():
        state = checkpoint.TrainingState(
            workdir,
            step=step,
            model=model,
            optimizer=optimizer,
            is_chief=is_chief,
            keep=config.train.keep_checkpoints,
            every_steps=plan["checkpoint_every"],
        )
        start_step = state.restore()
    logging.info("Model %s: %s weights", model.name, f"{model_lib.count_parameters(model):,}")
    if is_chief:
        write_config(workdir, config, plan)

    # Resume order: restore the step first, then start the data stream after the
    # examples that step has consumed (file names only are skipped, nothing decoded).
    def train_input(input_context):
        examples_per_pipeline = plan["global_batch_size"] // input_context.num_input_pipelines
        return pipeline.make_dataset(
            train_rows,
            config.data,
            input_context,
            training=True,
            seed=config.train.seed,
            skip_examples=start_step * examples_per_pipeline,
            cache_dir=cache_dir,
        )

    def valid_input(input_context):
        return pipeline.make_dataset(
            valid_rows,
            config.data,
            input_context,
            training=False,
            with_weights=True,
            cache_dir=cache_dir,
        )

    train_iterator = iter(strategy.distribute_datasets_from_function(train_input))
    valid_dataset = strategy.distribute_datasets_from_function(valid_input)
    pipeline.log_parallelism(config.data, max(1, num_replicas))

    train_fn = loop.make_train_fn(
        model,
        optimizer,
        step,
        strategy,
        global_batch_size=plan["global_batch_size"],
        jit_compile=config.train.jit_compile,
    )
    eval_fn = loop.make_eval_fn(model, strategy)

    # --- Reporting --------------------------------------------------------------
    wandb_run = None
    if config.log.wandb and is_chief:
        wandb_run = report.start_wandb(config.to_dict(), workdir, config.log.wandb_project)
    writer = report.MetricsWriter(workdir, enabled=is_chief, wandb_run=wandb_run)
    writer.drop_after(start_step)
    samples = None
    if config.log.num_samples > 0:
        samples = pictures.take_samples(valid_rows, config.data.image_size, config.log.num_samples)

    # --- Loop -------------------------------------------------------------------
    total_steps = plan["total_steps"]
    progress = _Progress(start_step, total_steps)
    window = _TrainWindow()
    divergence = _DivergenceGuard(config.train.max_bad_steps)
    stop = preemption.StopRequest().install()
    any_worker = distribute.make_any_worker_fn(strategy)
    while int(step.numpy()) < total_steps and not any_worker(stop.requested):
        current = int(step.numpy())
        num_steps = steps_until_event(current, plan, config.train.steps_per_execution)
        started = time.perf_counter()
        logs = train_fn(train_iterator, tf.constant(num_steps, tf.int32))
        window.add(logs, num_steps * plan["global_batch_size"], time.perf_counter() - started)
        current = int(step.numpy())
        progress.update(current, window.loss, window.images_per_sec)
        divergence.check(current, num_steps, int(logs["finite_steps"]), state)

        if is_due(current, plan["log_every"], total_steps):
            summary = window.summary()
            writer.write(current, "train", summary)
            progress.log_train(current, summary)
            window = _TrainWindow()
        if is_due(current, plan["eval_every"], total_steps):
            results = loop.evaluate(eval_fn, valid_dataset)
            _record_evaluation(save_dir, model, state, writer, current, results)
            if samples is not None:
                pictures.write_samples(
                    model,
                    samples,
                    step=current,
                    workdir=save_dir,
                    summary_writer=writer.summary_writer,
                    wandb_run=wandb_run,
                )
            progress.note(
                f"step {current}/{total_steps}: valid loss {results['loss']:.4f} "
                f"IoU {results['iou']:.4f} F1 {results['fscore']:.4f}"
            )
        state.save()
    state.save(force=True)
    progress.close()
    stop.uninstall()
    stopped_early = int(step.numpy()) < total_steps
    if stopped_early:
        cause = stop.signal_name or "another worker's stop request"
        message = (
            f"Stopped by {cause} at step {int(step.numpy())}; the checkpoint is saved: "
            "run the same command again to resume"
        )
        logging.warning("%s", message)
        print(message, flush=True)
        writer.close()
        if not is_chief:
            shutil.rmtree(save_dir, ignore_errors=True)
        return

    # --- Results ---------------------------------------------------------------
    if is_chief:
        _finish(workdir, model, writer)
    else:
        checkpoint.load_best_weights(save_dir, model)
        serving.export_saved_model(model, os.path.join(save_dir, "export"))
        shutil.rmtree(save_dir, ignore_errors=True)
    writer.close()


class _DivergenceGuard:
    """Stops the run after too many consecutive steps with a non-finite loss or gradient.

    Such steps are skipped (weights unchanged), so the checkpoints stay good; a
    run that keeps producing them has diverged and burns compute for nothing.
    """

    def __init__(self, max_bad_steps: int):
        self._max_bad_steps = max_bad_steps
        self._bad_in_a_row = 0
        self._first_bad_step = None

    def check(self, step: int, num_steps: int, finite_steps: int, state) -> None:
        if finite_steps == num_steps:
            self._bad_in_a_row, self._first_bad_step = 0, None
            return
        # Steps of one call are not told apart: count the call's bad steps as the latest.
        if finite_steps:
            self._bad_in_a_row = 0
        if self._first_bad_step is None or finite_steps:
            self._first_bad_step = step - (num_steps - finite_steps) + 1
        self._bad_in_a_row += num_steps - finite_steps
        logging.warning(
            "Non-finite loss or gradients: %d step(s) skipped up to step %d",
            num_steps - finite_steps,
            step,
        )
        if self._max_bad_steps and self._bad_in_a_row >= self._max_bad_steps:
            latest = state.manager.latest_checkpoint
            raise UserError(
                f"training diverged: {self._bad_in_a_row} steps in a row from step "
                f"{self._first_bad_step} had a non-finite loss or gradients (all skipped); the "
                f"last good checkpoint is {latest or 'none'}; lower --config.train.learning_rate "
                "or use float32, then resume"
            )


def _record_evaluation(save_dir, model, state, writer, step, results):
    values = {k: results[k] for k in ("loss", "iou", "fscore", "num_examples")}
    writer.write(step, "valid", values)
    if results["iou"] > float(state.best_iou.numpy()):
        state.best_iou.assign(results["iou"])
        checkpoint.save_best_weights(save_dir, model, step=step, results=values)


def _finish(workdir: str, model: tf.keras.Model, writer: report.MetricsWriter) -> None:
    """Exports the best weights as a SavedModel and plots the curves."""
    record = checkpoint.load_best_weights(workdir, model)
    export_dir = serving.export_saved_model(model, os.path.join(workdir, "export"))
    curves = report.plot_curves(workdir)
    summary = (
        f"best valid IoU {record['iou']:.4f} at step {record['step']}"
        if record
        else "no evaluation"
    )
    message = (
        f"Training done: {summary}.\n"
        f"  results:     {os.path.abspath(workdir)}\n"
        f"  SavedModel:  {export_dir}\n"
        f"  metrics:     {os.path.join(workdir, report.METRICS_FILE)}\n"
        f"  curves:      {curves}\n"
        f"  TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tb')}"
    )
    logging.info("Training done: %s", summary)
    print(message, flush=True)


def _log_summary(config, plan, train_rows, valid_rows) -> None:
    def per_group(rows):
        return ", ".join(f"{g}: {n}" for g, n in sorted(rows["group"].value_counts().items()))

    logging.info(
        "Data: %d train (%s), %d valid (%s)",
        len(train_rows),
        per_group(train_rows),
        len(valid_rows),
        per_group(valid_rows),
    )
    logging.info(
        "Run: %d steps (%d per epoch), global batch %d = %d replicas x %d, precision %s, "
        "%s-%s at %d px",
        plan["total_steps"],
        plan["steps_per_epoch"],
        plan["global_batch_size"],
        plan["num_replicas"],
        plan["per_replica_batch_size"],
        config.train.precision,
        config.model.arch,
        config.model.backbone,
        config.data.image_size,
    )


class _TrainWindow:
    """Training figures accumulated since the last train record."""

    def __init__(self):
        self.loss_sum, self.finite_steps, self.images, self.seconds = 0.0, 0, 0, 0.0
        self.tp = self.fp = self.fn = 0

    def add(self, logs, images, seconds):
        finite = int(logs["finite_steps"])
        if finite:
            self.loss_sum += float(logs["loss"]) * finite
        self.finite_steps += finite
        self.tp += int(logs["tp"])
        self.fp += int(logs["fp"])
        self.fn += int(logs["fn"])
        self.images += images
        self.seconds += seconds

    @property
    def loss(self):
        return self.loss_sum / self.finite_steps if self.finite_steps else float("nan")

    @property
    def images_per_sec(self):
        return self.images / self.seconds if self.seconds else 0.0

    def summary(self):
        return {
            "loss": self.loss,
            "iou": metrics.iou_from_sums(self.tp, self.fp, self.fn),
            "fscore": metrics.fscore_from_sums(self.tp, self.fp, self.fn),
            "images_per_sec": self.images_per_sec,
        }


class _Progress:
    """A tqdm bar on a terminal; plain log lines otherwise."""

    def __init__(self, start_step, total_steps):
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self._last = start_step
        self._total_steps = total_steps

    def update(self, step, loss, images_per_sec):
        if self._bar is not None:
            self._bar.update(step - self._last)
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_sec:.1f}")
        self._last = step

    def log_train(self, step, summary):
        """A train line in the log when there is no bar to show it."""
        if self._bar is None:
            logging.info(
                "step %d/%d: train loss %.4f IoU %.4f, %.1f images/s",
                step,
                self._total_steps,
                summary["loss"],
                summary["iou"],
                summary["images_per_sec"],
            )

    def note(self, message):
        if self._bar is not None:
            self._bar.write(message)
        else:
            logging.info("%s", message)

    def close(self):
        if self._bar is not None:
            self._bar.close()


if __name__ == "__main__":
    app.run(main)
