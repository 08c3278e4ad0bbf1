"""Recipe variants trained side by side on real photos: validation IoU against minutes.

    python -m benchmarks.recipe --data_root=DATA                # choose: a held-out slice
    python -m benchmarks.recipe --data_root=DATA --variants=base,lr_3e-3 --steps=400
    python -m benchmarks.recipe --data_root=DATA --final        # report valid/ once
    python -m benchmarks.recipe --data_root=DATA --variants=base,pad --proportions=mixed
    python -m benchmarks.recipe --quick                         # proves it runs; no figures

DATA is a real data set in the trainer's train/ + valid/ layout. Every variant
is the config (`--config`, default configs/small_data_cpu.py) with one change
(VARIANTS below), trained from scratch in a process of its own, one after the
other, on one CPU device, so that the minutes compare.

Choosing: without `--final`, each variant trains on train/ less a held-out
slice (`--holdout_fraction` of train/, the same seeded slice for every
variant) and is scored on that slice. valid/ is not read, so the choice is
not fitted to the split the recipe is reported on.

Reporting: `--final` trains the config as it is on all of train/ and scores
valid/ once, with the weights of the last step (evaluated only at the end, so
no checkpoint is chosen on valid/ either).

The data set is never copied: each run reads it through a folder of links.
IoU is the pooled IoU (tp / (tp + fp + fn) over all pixels at threshold 0.5)
at the model's input size, as the trainer's validation computes it; "IoU at
photo size" counts every pixel of each scored photo at its own size with the
best evaluation's weights, as `trainer.evaluate` does, which compares resize
modes on equal terms; minutes are the wall time of `train.train_and_evaluate`,
data cache and evaluations included.
"""

import os
import time
from pathlib import Path

from trainer import cli

import numpy as np
from absl import flags

from benchmarks import measure, proportions, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/small_data_cpu.py")
flags.DEFINE_string("data_root", None, "A real data set in the train/ + valid/ layout.")
flags.DEFINE_list(
    "variants",
    ["base", "lr_3e-3", "no_augment", "size_160"],
    "Variants to train (names of VARIANTS), each once.",
)
flags.DEFINE_integer("steps", 0, "Steps of each variant; 0 = the config's train.steps.")
flags.DEFINE_float("holdout_fraction", 0.15, "Share of train/ held out to choose on.")
flags.DEFINE_bool("final", False, "Train the config on train/, score valid/ once.")
flags.DEFINE_enum(
    "proportions",
    "own",
    ["own", "mixed"],
    "own: the photos as they are; mixed: each cut to proportions of its own (see proportions.py).",
)
flags.DEFINE_integer("eval_every", 0, "Choosing only: steps between evaluations; 0 = config's.")
FLAGS = flags.FLAGS

_BF16 = {"train.precision": "mixed_bfloat16"}

# One change each against the config; `base` is the config as it is.
VARIANTS = {
    "base": {},
    "lr_3e-3": {"train.learning_rate": 3e-3},
    "lr_3e-4": {"train.learning_rate": 3e-4},
    "lr_1e-3": {"train.learning_rate": 1e-3},
    "lr_6e-3": {"train.learning_rate": 6e-3},
    "no_augment": {"data.augment": False},
    "size_160": {"data.image_size": 160},
    "size_96": {"data.image_size": 96},
    "batch_8": {"data.batch_size": 8},
    "no_warmup": {"train.warmup_steps": 0},
    "constant_lr": {"train.lr_schedule": "constant"},
    "adamw": {"train.optimizer": "adamw", "train.weight_decay": 1e-4},
    "adam_1e-3": {"train.optimizer": "adam", "train.learning_rate": 1e-3},
    "adam_2e-3": {"train.optimizer": "adam", "train.learning_rate": 2e-3},
    "focal_0": {"train.focal_weight": 0.0},
    "focal_3": {"train.focal_weight": 3.0},
    "focal_10": {"train.focal_weight": 10.0},
    # Dice + binary cross-entropy in place of Dice + focal (focal's alpha 0.25 weighs
    # the foreground's pixels a third of the background's).
    "dice_bce": {"train.focal_weight": 0.0, "train.cross_entropy_weight": 1.0},
    "vertical_flip": {"data.vertical_flip": True},
    "wide_decoder": {"model.decoder_filters": (256, 128, 64, 32, 16)},
    "ema_0.99": {"train.ema_decay": 0.99},
    "ema_0.995": {"train.ema_decay": 0.995},
    "pad": {"data.resize": "pad"},
    "crop_1.5": {"data.resize": "crop", "data.crop_scale": 1.5},
    "crop_2.2": {"data.resize": "crop", "data.crop_scale": 2.2},
    "bf16": _BF16,
    # bfloat16 at about the base's minutes, where it runs 1.6x faster (AVX512-BF16).
    "bf16_800": {**_BF16, "train.steps": 800},
    # Against bf16_800 at about its minutes: a wider decoder in fewer steps, or
    # smaller images in more.
    "bf16_wide_650": {
        **_BF16,
        "train.steps": 650,
        "model.decoder_filters": (256, 128, 64, 32, 16),
    },
    "bf16_128_1200": {**_BF16, "train.steps": 1200, "data.image_size": 128},
    # Batch 8 at about the minutes of 2400 steps of batch 16 (a step of 8 cost
    # 0.65x one of 16 in round 3; 0.71x in round 13): the same photos, twice the updates.
    "batch_8_3700": {"data.batch_size": 8, "train.steps": 3700},
    # A lighter encoder in more steps: MobileNetV2 trained 1.35x the images/s of
    # ResNet-18 at 160 px in float32 (AMD EPYC Zen 3, benchmarks.precision), so
    # 675 of its steps take about the minutes of 500 of the base's.
    "mobilenetv2_675": {"model.backbone": "mobilenetv2", "train.steps": 675},
    # The same with ResNet-18's batch-norm momentum: Keras's MobileNetV2 uses 0.999,
    # whose moving statistics were still half-way from their start at step 600.
    "mobilenetv2_675_bn0.99": {
        "model.backbone": "mobilenetv2",
        "train.steps": 675,
        "model.batchnorm_momentum": 0.99,
    },
    # Half the seed's zoom, rotation, noise, blur and colour ranges.
    "augment_0.5": {"data.augment_strength": 0.5},
}
_HOLDOUT_SEED = 20261130
_QUICK = {"variants": ["base", "lr_3e-3"], "steps": 4, "holdout_fraction": 0.5}


def apply_overrides(config, overrides: dict):
    """The config with `{"group.field": value}` set (a copy)."""
    config = config.copy_and_resolve_references()
    for dotted, value in overrides.items():
        group, field = dotted.split(".")
        config[group][field] = value
    return config


def linked_data_root(
    data_root: str, folder: str, *, final: bool, holdout_fraction: float, mixed: bool = False
) -> str:
    """A train/ + valid/ folder of links into `data_root`.

    final: train/ -> train/, valid/ -> valid/. Otherwise train/ is split: a
    seeded `holdout_fraction` of its pairs becomes valid/, the rest train/.
    mixed: copies cut to mixed proportions (`proportions.cut_split`) instead of links.
    """
    from trainer.data import layout

    pairs = layout.scan(os.path.join(data_root, "train")).pairs
    if final:
        splits = {"train": pairs, "valid": layout.scan(os.path.join(data_root, "valid")).pairs}
    else:
        order = np.random.default_rng(_HOLDOUT_SEED).permutation(len(pairs))
        num_holdout = max(1, round(holdout_fraction * len(pairs)))
        splits = {
            "train": pairs.iloc[np.sort(order[num_holdout:])],
            "valid": pairs.iloc[np.sort(order[:num_holdout])],
        }
    root = Path(folder) / "data"
    for split, rows in splits.items():
        if mixed:
            proportions.cut_split(rows, root / split)
        else:
            runner.link_pairs(rows, root / split)
    return str(root)


def _photo_size_iou(workdir: str, data_root: str) -> float:
    """The pooled IoU at each scored photo's own size, as `trainer.evaluate` counts it.

    Validation during training counts at the model's size (stretch, pad) or at
    the scaled photo's (crop); this figure compares the resize modes on equal terms.
    """
    from trainer import evaluate, inference

    import tensorflow as tf

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        trained = inference.load_trained_model(workdir)
    rows = evaluate.select_rows(data_root, "valid", fallback_dir=workdir, task=trained.task)
    counts = evaluate.count_confusions(trained, rows, strategy, global_batch_size=8)
    return evaluate.summarize(rows, counts, trained.task)["iou"]


def run_child(variant: str) -> dict:
    """Trains one variant from scratch and scores its last evaluation."""
    from trainer import report as report_lib
    from trainer import train
    from trainer import workdir as workdir_lib

    import tensorflow as tf

    config = measure.config_from_json(FLAGS.config_json)
    data_root = linked_data_root(
        FLAGS.data_root,
        FLAGS.scratch,
        final=FLAGS.final,
        holdout_fraction=FLAGS.holdout_fraction,
        mixed=FLAGS.proportions == "mixed",
    )
    workdir = os.path.join(FLAGS.scratch, "run")
    started = time.perf_counter()
    results = train.train_and_evaluate(
        config,
        workdir=workdir,
        data_root=data_root,
        strategy=tf.distribute.OneDeviceStrategy("/cpu:0"),
    )
    minutes = (time.perf_counter() - started) / 60
    photo_iou = _photo_size_iou(workdir, data_root)
    records = report_lib.read_metrics(os.path.join(workdir, workdir_lib.METRICS_FILE))
    evaluations = [r for r in records if r["split"] == "valid"]
    last = evaluations[-1]
    return {
        "steps": results["step"],
        "minutes": minutes,
        "train_pairs": len(os.listdir(os.path.join(data_root, "train", "images"))),
        "scored_pairs": len(os.listdir(os.path.join(data_root, "valid", "images"))),
        "iou": last["iou"],
        "fscore": last["fscore"],
        "best_iou": max(r["iou"] for r in evaluations),
        "photo_iou": photo_iou,
        "iou_by_step": {r["step"]: round(r["iou"], 4) for r in evaluations},
    }


def variant_configs() -> dict:
    """`{name: config}` of the runs: the chosen variants, or the config alone under --final."""
    base = runner.config_for_child(FLAGS.config)
    if FLAGS.quick:
        base.train.eval_every = 2
        base.train.steps_per_execution = 1
        base.train.log_every = 1
    if FLAGS.steps:
        base.train.steps = FLAGS.steps
    if FLAGS.eval_every and not FLAGS.final:
        base.train.eval_every = FLAGS.eval_every
    if FLAGS.final:
        base.train.eval_every = base.train.steps  # one evaluation, after the last step
        return {"final": base}
    unknown = [name for name in FLAGS.variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {sorted(VARIANTS)}")
    return {name: apply_overrides(base, VARIANTS[name]) for name in FLAGS.variants}


def quick_data_root() -> str:
    """A tiny synthetic set in the train/ + valid/ layout, for `--quick` without --data_root."""
    from trainer.data import synthetic

    root = Path(FLAGS.data_dir or runner.DATA_DIR) / "recipe_quick"
    if not (root / "valid").exists():
        synthetic.write_dataset(root / "train", num_images=16, image_size=64, seed=1)
        synthetic.write_dataset(root / "valid", num_images=8, image_size=64, seed=2)
    return str(root)


def run_parent() -> int:
    """Trains each variant in its own process and prints IoU against minutes."""
    if FLAGS.quick and not FLAGS.data_root:
        FLAGS.data_root = quick_data_root()
    if not FLAGS.data_root:
        raise SystemExit(
            "--data_root=DATA is required: a real data set in the train/ + valid/ layout"
        )
    configs = variant_configs()
    settings = {
        "config": runner.config_settings(FLAGS.config)["config"],
        "data_root_name": Path(FLAGS.data_root).resolve().name,
        "final": FLAGS.final,
        "holdout_fraction": None if FLAGS.final else FLAGS.holdout_fraction,
        "proportions": FLAGS.proportions,
        "steps": next(iter(configs.values())).train.steps,
        "variants": {name: VARIANTS.get(name, {}) for name in configs},
    }
    name = "recipe_final" if FLAGS.final else "recipe"
    title = "the recipe on valid/, once" if FLAGS.final else "recipe variants on a held-out slice"
    record = report.start(name, title, settings)
    rows = []
    for variant, config in configs.items():
        args = {"config_json": config, "data_root": FLAGS.data_root, "final": FLAGS.final}
        args["holdout_fraction"] = FLAGS.holdout_fraction
        args["proportions"] = FLAGS.proportions
        result = runner.run_child("recipe", variant, args, scratch=True, timeout_s=4 * 3600)
        rows.append(result)
    ratios, notes = {}, []
    base = next((row for row in rows if row["variant"] == "base" and "iou" in row), None)
    for row in rows:
        if base is not None and "iou" in row and row is not base:
            ratios[f"IoU {row['variant']} / base"] = report.ratio(row["iou"], base["iou"])
            notes.append(
                f"{row['variant']}: IoU {row['iou'] - base['iou']:+.4f} against base, "
                f"{report.ratio(row['minutes'], base['minutes']):.2f}x the minutes"
            )
    goals = []
    if FLAGS.final and "iou" in rows[0]:
        goals.append(report.goal("valid IoU", rows[0]["iou"], 0.75))
        goals.append(report.goal("minutes of training", rows[0]["minutes"], 25.0, at_most=True))
    return report.finish(record, rows, _COLUMNS, goals=goals, ratios=ratios, notes=notes)


_COLUMNS = [
    report.Column("variant", "variant"),
    report.Column("steps", "steps"),
    report.Column("train_pairs", "train pairs"),
    report.Column("scored_pairs", "scored pairs"),
    report.Column("minutes", "minutes", ".1f"),
    report.Column("iou", "IoU (last)", ".4f"),
    report.Column("fscore", "F1 (last)", ".4f"),
    report.Column("best_iou", "IoU (best eval)", ".4f"),
    report.Column("photo_iou", "IoU at photo size (best eval's weights)", ".4f"),
]


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
