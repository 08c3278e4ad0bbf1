"""Trains a segmentation model on a data folder; resumes when the work directory has a run.

    python -m trainer.train --config=configs/demo_cpu.py --data_root=data/synthetic \
        --workdir=runs/demo
    python -m trainer.train --config=configs/nail_unet_effb4.py --strategy=mirrored \
        --data_root=/data/nails --workdir=/work/effb4 --config.train.epochs=50

A restart on the same work directory resumes from its latest checkpoint. The
command line is a thin layer over `train_and_evaluate`, which tests and
notebooks call directly.
"""

import os
import shutil
import signal
import sys
import tempfile
import time

from trainer import best as best_lib
from trainer import (
    checkpoint,
    classes,
    cli,
    config_check,
    distribute,
    loop,
    optim,
    pictures,
    preemption,
    progress,
    report,
    serving,
)
from trainer import model as model_lib
from trainer import workdir as workdir_lib
from trainer.data import cache as data_cache
from trainer.data import decode, layout, manifest, pipeline, records
from trainer.plan import is_due, run_plan, steps_until_event

import ml_collections
import tensorflow as tf
from absl import app, flags, logging

FLAGS = flags.FLAGS
# What a multi-worker run's collectives raise when a peer is gone.
LOST_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)
EXIT_LOST_WORKER = 128 + signal.SIGHUP  # 129: the other end hung up


def define_flags() -> None:
    """Defines the command-line flags; called by the entry point only.

    Importing this module for `train_and_evaluate` (a benchmark, a notebook)
    then defines no flag that the importer defines too.
    """
    cli.define_config_flag()
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
    flags.DEFINE_string(
        "data_root", None, "Data set folder (Images/ + Masks/, or train/ + valid/)."
    )
    cli.define_distribution_flags()
    flags.DEFINE_bool(
        "overwrite", False, "Delete a previous run in --workdir instead of resuming it."
    )
    flags.mark_flags_as_required(["workdir", "data_root"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    distribute.configure_cpu_devices(FLAGS.num_cpu_devices)
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    try:
        results = train_and_evaluate(
            FLAGS.config,
            workdir=FLAGS.workdir,
            data_root=FLAGS.data_root,
            strategy=strategy,
            overwrite=FLAGS.overwrite,
        )
    except LOST_PEER_ERRORS as error:
        if distribute.num_workers(strategy) == 1:
            raise
        # A worker killed outright fails the others' next collective: retryable,
        # unlike a traceback's exit 1, which `restartPolicy: ExitCode` leaves stopped.
        logging.error("The collective failed: %s", error)
        print(
            f"error: {distribute.lost_peer_summary(error)}; start every worker again with the "
            "same command to resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_LOST_WORKER)
    status = exit_status(results)
    if status:
        sys.exit(status)


def exit_status(results: dict) -> int:
    """The process's exit status for a run's results (README, "Exit statuses").

    0 when the run finished; 128 + the signal when it was interrupted after
    saving its checkpoint (143 for SIGTERM, 130 for Ctrl-C; a worker stopped
    with the others counts as SIGTERM), so that orchestrators restart it
    (Kubernetes' `restartPolicy: ExitCode` restarts on 128 or more).
    """
    stopped_by = results["stopped_by"]
    if stopped_by is None:
        return 0
    signum = signal.Signals.__members__.get(stopped_by, signal.SIGTERM)
    return 128 + int(signum)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    *,
    workdir: str,
    data_root: str,
    strategy: tf.distribute.Strategy,
    overwrite: bool = False,
) -> dict:
    """Trains `config` on the data of `data_root`, resuming the run of `workdir` if there is one.

    Evaluates and checkpoints as the config asks, keeps the best weights, and
    at the end exports them as a SavedModel and plots the curves (the chief
    only). A stop request (SIGTERM, Ctrl-C, another worker's) saves a
    checkpoint at the next step boundary and returns early.

    Args:
        config: a config of configs/ (data / model / train / log groups).
        workdir: the run's folder (checkpoints, metrics, exports).
        data_root: the data set folder.
        strategy: the tf.distribute strategy to train with.
        overwrite: delete a previous run in `workdir` instead of resuming it.

    Returns:
        `step` (reached), `total_steps`, `stopped_by` (the signal's name, or
        None when the run finished), `best` (the best evaluation's record, or
        None) and `export_dir` (None when stopped early or not the chief).

    Raises:
        UserError: a bad config, data folder or work directory; a diverged run.
    """
    # --- Checks that cost nothing, before any photo is read ---------------------
    config_check.validate(config)
    cache_dir = data_cache.cache_dir(config.data, workdir)
    is_chief = distribute.is_chief(strategy)
    if is_chief and not overwrite:
        workdir_lib.check_workdir(workdir, config, overwrite=False)
    distribute.describe(strategy)

    # --- Data -------------------------------------------------------------------
    task = classes.task(config)
    crop_side_px = decode.crop_side_of(config.data)
    train_rows, valid_rows = read_data(config, data_root, workdir)
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    plan = run_plan(config, len(train_rows), strategy.num_replicas_in_sync, on_tpu=on_tpu)
    _log_summary(config, plan, train_rows, valid_rows)
    local_replicas = max(1, plan["num_replicas"] // distribute.num_workers(strategy))
    num_parallel_calls, _ = pipeline.pipeline_parallelism(config.data, local_replicas)
    shard = distribute.input_shard(strategy)
    valid_source = valid_rows  # the sample pictures decode it: the cache holds no photos
    if cache_dir is not None:
        # Each input pipeline reads only its shard: this process caches that one.
        train_rows, valid_rows = (
            data_cache.ensure_cached(
                rows,
                config.data.image_size,
                cache_dir,
                num_parallel_calls=num_parallel_calls,
                shard=shard,
                resize=config.data.resize,
                num_classes=task.num_classes,
                crop_side_px=crop_side_px,
            )
            for rows in (train_rows, valid_rows)
        )

    if is_chief and overwrite:
        # Only now that the data and the plan are known good: a mistyped flag
        # must not cost the previous run.
        workdir_lib.check_workdir(workdir, config, overwrite=True)

    # --- Model, optimizer, state ----------------------------------------------
    trainee = loop.build_trainee(config, strategy, plan)
    with strategy.scope():
        state = checkpoint.TrainingState(
            workdir,
            step=trainee.step,
            model=trainee.model,
            optimizer=trainee.optimizer,
            is_chief=is_chief,
            keep=config.train.keep_checkpoints,
            every_steps=plan["checkpoint_every"],
        )
        start_step = state.restore()
    logging.info(
        "Model %s: %s weights",
        trainee.model.name,
        f"{model_lib.count_parameters(trainee.model):,}",
    )
    if is_chief:
        run = dict(plan, strategy=distribute.strategy_name(strategy), data_root=data_root)
        workdir_lib.write_json(
            os.path.join(workdir, workdir_lib.CONFIG_FILE), dict(config.to_dict(), run=run)
        )

    # Resume order: restore the step first, then start the data stream after the
    # examples that step has consumed (file names only are skipped, nothing decoded).
    def train_input(input_context):
        if cache_dir is not None:
            _check_shard(input_context, shard)
        examples_per_pipeline = plan["global_batch_size"] // input_context.num_input_pipelines
        return pipeline.make_dataset(
            train_rows,
            config.data,
            input_context,
            training=True,
            seed=config.train.seed,
            skip_examples=start_step * examples_per_pipeline,
            num_classes=task.num_classes,
        )

    def valid_input(input_context):
        return pipeline.make_dataset(
            valid_rows,
            config.data,
            input_context,
            training=False,
            with_weights=True,
            num_classes=task.num_classes,
        )

    train_iterator = iter(strategy.distribute_datasets_from_function(train_input))
    valid_dataset = strategy.distribute_datasets_from_function(valid_input)
    pipeline.log_parallelism(config.data, local_replicas)

    # --- Loop, with everything it opens closed in `finally` -------------------
    # Saving weights, exporting and drawing samples read synchronised batch-norm
    # statistics, a collective op: every worker does them, non-chiefs in a temp dir.
    save_dir = workdir if is_chief else tempfile.mkdtemp(prefix="worker_results_")
    wandb_run = None
    if config.log.wandb and is_chief:
        wandb_run = report.start_wandb(config.to_dict(), workdir, config.log.wandb_project)
    writer = report.MetricsWriter(workdir, enabled=is_chief, wandb_run=wandb_run)
    samples = None
    if config.log.num_samples > 0:
        samples = pictures.take_samples(
            valid_source,
            config.data.image_size,
            config.log.num_samples,
            config.data.resize,
            task.num_classes,
            crop_side_px=crop_side_px,
        )
    total_steps = plan["total_steps"]

    # Under train.ema_decay, what is evaluated, kept as the best and exported is
    # the average of the weights; training goes on from the trained values.
    def averaged():
        return optim.averaged_weights(trainee.optimizer, trainee.model.trainable_variables)

    bar = progress.Progress(start_step, total_steps)
    # After the restore: TensorFlow's preemption handler, where the strategy gets
    # it, must not restore over ours (see trainer/preemption.py).
    watch = preemption.Watch(strategy, state).install()
    try:
        writer.drop_after(start_step)
        window = progress.TrainWindow(task)
        divergence = progress.DivergenceGuard(config.train.max_bad_steps)
        while int(trainee.step.numpy()) < total_steps and not watch.should_stop():
            current = int(trainee.step.numpy())
            num_steps = steps_until_event(current, plan, plan["steps_per_execution"])
            started = time.perf_counter()
            logs = trainee.train_fn(train_iterator, tf.constant(num_steps, tf.int32))
            window.add(logs, num_steps * plan["global_batch_size"], time.perf_counter() - started)
            current = int(trainee.step.numpy())
            bar.update(current, window.loss, window.images_per_sec)
            divergence.check(
                current, num_steps, int(logs["finite_steps"]), state.manager.latest_checkpoint
            )

            if is_due(current, plan["log_every"], total_steps):
                learning_rate = optim.learning_rate_at(trainee.optimizer, current - 1)
                summary = dict(window.summary(), learning_rate=learning_rate)
                writer.write(current, "train", summary)
                bar.log_train(current, summary)
                window = progress.TrainWindow(task)
            if is_due(current, plan["eval_every"], total_steps):
                with averaged():
                    results = loop.evaluate(trainee.eval_fn, valid_dataset, task)
                    _record_evaluation(
                        save_dir, trainee.model, state, writer, current, results, task
                    )
                    if samples is not None:
                        pictures.write_samples(
                            trainee.model,
                            samples,
                            step=current,
                            workdir=save_dir,
                            summary_writer=writer.summary_writer,
                            wandb_run=wandb_run,
                            task=task,
                        )
                per_class = "".join(
                    f", {name} {scores['iou']:.4f}"
                    for name, scores in results["per_class"].items()
                    if not task.is_binary
                )
                bar.note(
                    f"step {current}/{total_steps}: valid loss {results['loss']:.4f} "
                    f"IoU {results['iou']:.4f} F1 {results['fscore']:.4f}{per_class}"
                )
            state.save()
            watch.after_step()
        watch.end()
        state.save(force=True)
        bar.close()

        # --- Results ------------------------------------------------------------
        step = int(trainee.step.numpy())
        results = {"step": step, "total_steps": total_steps, "stopped_by": None}
        if step < total_steps:
            results["stopped_by"] = watch.stopped_by
            results.update(best=best_lib.read_best(save_dir), export_dir=None)
            message = (
                f"Stopped by {results['stopped_by']} at step {step}; the checkpoint is saved: "
                "run the same command again to resume"
            )
            logging.warning("%s", message)
            print(message, flush=True)
            return results
        with averaged():
            results.update(
                _finish(
                    save_dir,
                    trainee.model,
                    is_chief=is_chief,
                    resize=config.data.resize,
                    task=task,
                    crop_side_px=crop_side_px,
                )
            )
        return results
    finally:
        # A failing cleanup (a flush on a full disk) must not replace the error
        # that brought the run here: it is logged instead.
        for cleanup in (watch.uninstall, bar.close, writer.close):
            try:
                cleanup()
            except Exception as error:  # noqa: BLE001
                logging.warning("Cleanup %s failed: %s", cleanup.__qualname__, error)
        if not is_chief:
            shutil.rmtree(save_dir, ignore_errors=True)


def _record_evaluation(save_dir, model, state, writer, step, results, task):
    values = {k: results[k] for k in ("loss", "iou", "fscore", "num_examples")}
    values.update(task.per_class_record(results))
    writer.write(step, "valid", values)
    if results["iou"] > float(state.best_iou.numpy()):
        state.best_iou.assign(results["iou"])
        best_lib.save_best_weights(save_dir, model, step=step, results=values)


def _finish(
    save_dir: str,
    model: tf.keras.Model,
    *,
    is_chief: bool,
    resize: str,
    task: classes.Task,
    crop_side_px: int,
) -> dict:
    """Exports the best weights as a SavedModel and, on the chief, plots the curves."""
    record = best_lib.load_best_weights(save_dir, model)
    export_dir = serving.export_saved_model(
        model,
        os.path.join(save_dir, workdir_lib.EXPORT_DIR),
        resize=resize,
        task=task,
        crop_side_px=crop_side_px,
    )
    if not is_chief:
        return {"best": record, "export_dir": None}
    curves = report.plot_curves(save_dir)
    tensorboard_dir = os.path.join(save_dir, workdir_lib.TENSORBOARD_DIR)
    summary = (
        f"best valid IoU {record['iou']:.4f} at step {record['step']}"
        if record
        else "no evaluation"
    )
    logging.info("Training done: %s", summary)
    print(
        f"Training done: {summary}.\n"
        f"  results:     {layout.absolute(save_dir)}\n"
        f"  SavedModel:  {export_dir}\n"
        f"  metrics:     {os.path.join(save_dir, workdir_lib.METRICS_FILE)}\n"
        f"  curves:      {curves}\n"
        f"  TensorBoard: tensorboard --logdir {tensorboard_dir}",
        flush=True,
    )
    return {"best": record, "export_dir": export_dir}


def _check_shard(input_context: tf.distribute.InputContext, shard: tuple[int, int]) -> None:
    """The cache was built for the input pipeline that TensorFlow hands this process.

    A cache of every row (`(0, 1)`: one process builds every host's pipeline,
    as a TPU pod slice's client does) serves any pipeline.
    """
    given = (input_context.input_pipeline_id, input_context.num_input_pipelines)
    if shard != (0, 1) and given != shard:
        raise AssertionError(
            f"the data cache was built for input pipeline {shard[0]} of {shard[1]}, "
            f"but TensorFlow gives this process pipeline {given[0]} of {given[1]}"
        )


def read_data(config, data_root: str, workdir: str):
    """The run's `(train, valid)`: manifests of a folder, or the splits of a records folder.

    A folder's manifests are prepared when missing (`manifest.read_manifests`);
    a records folder (`prepare --records`) is read from its index.
    """
    num_classes = classes.task(config).num_classes
    if records.is_records_root(data_root):
        splits = records.read_index(data_root, num_classes=num_classes)
        logging.info("Data: the records folder %s", data_root)
        return splits["train"], splits["valid"]
    return manifest.read_manifests(
        data_root,
        fallback_dir=workdir,
        valid_fraction=config.data.valid_fraction,
        num_classes=num_classes,
        ignore_label=config.data.ignore_label,
    )


def _log_summary(config, plan, train_rows, valid_rows) -> None:
    def per_group(rows):
        if isinstance(rows, records.Split):
            counts = rows.group_counts()
        else:
            counts = rows["group"].value_counts().to_dict()
        return ", ".join(f"{g}: {n}" for g, n in sorted(counts.items()))

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
        plan["precision"],
        config.model.arch,
        config.model.backbone,
        config.data.image_size,
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
